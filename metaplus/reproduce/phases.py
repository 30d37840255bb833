"""The preset's schedule, composed exactly as train.py does: its epochs x iterations, derivative order, and
the phases of its epochs that cost differently per iteration (MSL's, DA's)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from metaplus.compose import compose_config
from metaplus.reproduce.registry import Row


@dataclass(frozen=True)
class Schedule:
    """What the preset prescribes and the budget keeps or shrinks."""

    epochs: int
    batches_per_epoch: int
    preset: str | None
    derivative_order: str
    test_inner_steps: int
    # Something counts the preset's epochs (MSL, derivative-order annealing, an outer learning-rate schedule
    # or warm-up): the budget must keep them. Without any, the epochs only space the validations.
    epoch_scheduled: bool = True

    @property
    def iterations(self) -> int:
        return self.epochs * self.batches_per_epoch


def derivative_order(algo: Any) -> str:
    if algo.name == "reptile":
        return "first (Reptile)"
    if algo.get("first_order"):
        return "first"
    if algo.get("da") and int(algo.get("da_epochs") or 0) > 0:
        return f"first, second after {algo.da_epochs} epochs"
    return "second"


def epoch_scheduled(algo: Any) -> bool:
    """Whether anything in the algorithm's config is scheduled over the preset's epochs or steps."""
    return bool(
        algo.get("msl")
        or (algo.get("da") and int(algo.get("da_epochs") or 0) > 0)
        or algo.get("ca")
        or algo.get("lr_schedule", "constant") != "constant"
        or int(algo.get("warmup_steps") or 0) > 0
    )


def preset_schedule(row: Row) -> Schedule:
    cfg = compose_config(row.overrides)
    preset = cfg.get("preset")
    return Schedule(
        epochs=int(cfg.trainer.max_epochs),
        batches_per_epoch=int(cfg.data.batches_per_epoch),
        preset=preset.name if preset else None,
        derivative_order=derivative_order(cfg.algo),
        test_inner_steps=int(cfg.algo.test_inner_steps),
        epoch_scheduled=epoch_scheduled(cfg.algo),
    )


@dataclass(frozen=True)
class Phase:
    """A run of the preset's epochs at one cost per iteration: the multi-step loss (MSL) computes the query
    loss after every inner step while it lasts, derivative-order annealing (DA) trains first order while
    it lasts. A calibration is one epoch, the first phase's, so each phase is measured apart."""

    epochs: int
    overrides: tuple[str, ...] = ()  # the switches that put epoch 0 of a calibration in this phase
    label: str = "every epoch"


PHASE_NAMES = {"msl": ("multi-step loss", "final-step loss"), "da": ("first order", "second order")}  # (on, off)


def epoch_phases(row: Row) -> list[Phase]:
    cfg = compose_config(row.overrides)
    return phases_of(cfg.algo, int(cfg.trainer.max_epochs))


def phases_of(algo: Any, epochs: int) -> list[Phase]:
    """The epochs split where MSL or DA end; one phase when nothing changes the cost."""
    ends = {}
    if algo.get("msl") and 0 < int(algo.get("msl_epochs") or 0) < epochs:
        ends["msl"] = int(algo.msl_epochs)
    if algo.get("da") and 0 < int(algo.get("da_epochs") or 0) < epochs:
        ends["da"] = int(algo.da_epochs)
    if not ends:
        return [Phase(epochs)]
    bounds = sorted({0, epochs, *ends.values()})
    phases = []
    for start, stop in zip(bounds, bounds[1:]):
        on = {name: start < end for name, end in ends.items()}
        label = ", ".join(PHASE_NAMES[name][not active] for name, active in on.items())
        phases.append(
            Phase(
                stop - start,
                tuple(f"algo.{name}={str(active).lower()}" for name, active in on.items()),
                f"epochs {start}-{stop - 1}: {label}",
            )
        )
    return phases
