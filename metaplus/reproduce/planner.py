"""Budget scaling: the preset's epochs kept, the iterations per epoch and the validations shrunk to fit the
minutes of a budget (see the package docstring)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from metaplus.reproduce.phases import Schedule

VAL_EPISODES = 100  # per validation during a budgeted run (image and regression data alike)
MAX_VALIDATIONS = 20
MIN_VALIDATIONS = 5  # fewer validation episodes (not below MIN_VAL_EPISODES) rather than fewer than this
MIN_VAL_EPISODES = 20
VAL_SHARE = 0.15  # at most this share of the budget goes to validation
PLAN_SHARE = 0.9  # iterations are planned for this share of the budget; max_time = the budget
TEST_EPISODES = 600
QUICK_BUDGET_MIN = 2.0
DEFAULT_BUDGET_MIN = 30.0


@dataclass(frozen=True)
class Timing:
    s_per_iteration: float
    s_per_val_episode: float
    source: str = "measured"


@dataclass(frozen=True)
class Plan:
    val_episodes: int
    epochs: int  # the preset's, unless the budget holds less than one iteration per epoch
    batches_per_epoch: int
    val_every: int  # epochs between validations
    validations: int
    planned_iterations: int
    planned_train_s: float
    planned_val_s: float
    schedule_complete: bool  # the preset's epochs are all trained (else the epoch schedules are cut)


def validation_interval(epochs: int, most: int) -> int:
    """The smallest divisor d of ``epochs`` with epochs / d <= most: the last epoch is always validated."""
    most = max(1, most)
    return next(d for d in range(1, epochs + 1) if epochs % d == 0 and epochs // d <= most)


def plan_budget(
    schedule: Schedule,
    timing: Timing,
    budget_s: float,
    *,
    val_episodes: int = VAL_EPISODES,
    max_validations: int = MAX_VALIDATIONS,
    val_share: float = VAL_SHARE,
    plan_share: float = PLAN_SHARE,
) -> Plan:
    """Keep the preset's epochs, shrink the iterations per epoch to the budget (never above the paper's).

    Validations: as many as fit ``val_share`` of the budget, 1 to ``max_validations``, of ``val_episodes``
    episodes, fewer episodes (down to MIN_VAL_EPISODES) where 5 full ones would not fit. Iterations: what is
    left of ``plan_share`` of the budget. A budget below one iteration per epoch trains that many epochs
    of one iteration (the epoch-valued schedules are then cut, not compressed: schedule_complete false).
    """
    if timing.s_per_val_episode > 0:  # an expensive evaluation: smaller validations, not fewer than 5 of them
        fits = math.floor(val_share * budget_s / (MIN_VALIDATIONS * timing.s_per_val_episode))
        val_episodes = max(MIN_VAL_EPISODES, min(val_episodes, fits))
    one_validation_s = val_episodes * timing.s_per_val_episode
    affordable = math.floor(val_share * budget_s / one_validation_s) if one_validation_s > 0 else max_validations
    wanted = min(max_validations, max(affordable, 1))
    iterations = max(1, math.floor((plan_share * budget_s - wanted * one_validation_s) / timing.s_per_iteration))
    if iterations >= schedule.epochs:
        epochs, batches = schedule.epochs, min(schedule.batches_per_epoch, iterations // schedule.epochs)
        if not schedule.epoch_scheduled and batches < schedule.batches_per_epoch:
            epochs, batches = fewer_fuller_epochs(iterations, schedule, wanted)
    else:
        epochs, batches = iterations, 1
    val_every = validation_interval(epochs, wanted)
    validations = epochs // val_every
    planned = epochs * batches
    return Plan(
        val_episodes=val_episodes,
        epochs=epochs,
        batches_per_epoch=batches,
        val_every=val_every,
        validations=validations,
        planned_iterations=planned,
        planned_train_s=planned * timing.s_per_iteration,
        planned_val_s=validations * one_validation_s,
        schedule_complete=epochs == schedule.epochs or not schedule.epoch_scheduled,
    )


def fewer_fuller_epochs(iterations: int, schedule: Schedule, wanted: int) -> tuple[int, int]:
    """Epochs x batches close to ``iterations`` for a preset nothing schedules over its epochs.

    Keeping its epochs rounds the iterations per epoch down and loses up to an epoch's worth of each
    (MAML Omniglot, 120 epochs: 340 affordable iterations train 240). Here the batches per epoch round
    up and the epochs follow, among those with at least half the wanted validations (not fewer than
    MIN_VALIDATIONS) that validate on the last epoch: 340 iterations, 20 validations wanted -> not 3 x 113
    (113 is prime: one validation) but 3 x 112 = 336, validated every 7 epochs (16 times).
    """
    batches = min(schedule.batches_per_epoch, math.ceil(iterations / schedule.epochs))
    most = min(schedule.epochs, iterations // batches)
    enough = min(wanted, max(MIN_VALIDATIONS, wanted // 2))
    for epochs in range(most, max(1, most * 3 // 4) - 1, -1):
        if epochs // validation_interval(epochs, wanted) >= enough:
            return epochs, batches
    return most, batches


def max_time(budget_s: float) -> str:
    """Lightning's ``max_time`` as DD:HH:MM:SS, rounded up to the second."""
    seconds = math.ceil(budget_s)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def budget_overrides(plan: Plan, schedule: Schedule, budget_s: float) -> list[str]:
    epochs = [] if plan.epochs == schedule.epochs else [f"trainer.max_epochs={plan.epochs}"]
    return [
        *epochs,
        f"data.batches_per_epoch={plan.batches_per_epoch}",
        f"trainer.check_val_every_n_epoch={plan.val_every}",
        f"data.val_episodes={plan.val_episodes}",
        f"+trainer.max_time={max_time(budget_s)}",
    ]
