"""Runs that went wrong although their numbers stay finite: a loss above a ceiling, accuracy at chance level."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from metaplus.errors import check, check_choice, check_int


class DivergenceError(FloatingPointError):
    """Raised by :class:`Divergence` with ``on_loss_ceiling: error``."""


class Divergence(Callback):
    """Says when a run went wrong although its numbers stay finite (NaN/inf already stop training in
    ``EpisodicLearner.training_step``).

    - Loss ceiling: ``train/loss`` above ``max_loss`` for ``patience`` consecutive training steps.
      ``max_loss: auto`` is ``10 * ln(ways)`` for classification (cross-entropy at chance level is
      ``ln(ways)``; a healthy run starts near it and goes down) and ``1e6`` for regression (an MSE far
      beyond the targets' scale: sinusoid amplitudes are <= 5). ``on_loss_ceiling``: ``stop`` (default:
      training ends, the last weights are evaluated and the warning is recorded), ``warn`` or ``error``.
    - Chance level (classification): after at least ``chance_after_steps`` training steps, a validation
      accuracy whose 95% CI contains ``1/ways`` means training never left chance level; the test
      accuracy is checked the same way. ``on_chance``: ``warn`` (default) or ``stop``.

    Every finding is warned loudly and kept in ``run_warnings``, which ``metaplus.run`` writes to
    results.json (``warnings``) and prints in its summary.

    The loss ceiling is tracked on the loss's device (no device->host read per step, which would
    stall a GPU step) and read back every ``check_every_n_steps`` training steps and at the end of
    every training epoch, so a run stops at most that many steps after its loss crossed the ceiling
    for ``patience`` steps. Under DDP that read-back is one all-reduce: the ranks decide together, so
    a loss that diverges on one rank stops every rank (one rank stopping alone would leave the others
    waiting for ever in the next gradient all-reduce).
    """

    def __init__(
        self,
        max_loss: float | str = "auto",
        patience: int = 3,
        on_loss_ceiling: str = "stop",
        chance_after_steps: int = 200,
        on_chance: str = "warn",
        check_every_n_steps: int = 10,
    ):
        check(
            "max_loss",
            max_loss,
            max_loss == "auto"
            or (isinstance(max_loss, (int, float)) and not isinstance(max_loss, bool) and max_loss > 0),
            "'auto' or a number > 0",
        )
        check_int("patience", patience, 1)
        check_choice("on_loss_ceiling", on_loss_ceiling, {"stop", "warn", "error"})
        check_int("chance_after_steps", chance_after_steps, 0)
        check_choice("on_chance", on_chance, {"stop", "warn"})
        check_int("check_every_n_steps", check_every_n_steps, 1)
        self.max_loss, self.patience, self.on_loss_ceiling = max_loss, patience, on_loss_ceiling
        self.chance_after_steps, self.on_chance = chance_after_steps, on_chance
        self.check_every_n_steps = check_every_n_steps
        self.above: Any = 0  # consecutive steps above the ceiling: a tensor on the loss's device once training
        self.reached: Any = False  # whether `above` reached `patience` since the last check (device tensor)
        self.unchecked_steps = 0
        self.run_warnings: list[str] = []

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def ways(trainer, pl_module) -> int | None:
        if getattr(pl_module, "task_type", None) != "classification":
            return None
        ways = getattr(getattr(trainer, "datamodule", None), "ways", None)
        return ways if isinstance(ways, int) and ways >= 2 else None

    def ceiling(self, trainer, pl_module) -> float:
        if self.max_loss != "auto":
            return float(self.max_loss)
        ways = self.ways(trainer, pl_module)
        return 10.0 * math.log(ways) if ways else 1e6

    def record(self, message: str) -> None:
        if message in self.run_warnings:
            return
        self.run_warnings.append(message)
        rank_zero_warn(message)
        logging.getLogger("metaplus").warning(message)

    # -- the checks ----------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train/loss")
        if loss is None:
            return
        above = torch.as_tensor(loss).detach() > self.ceiling(trainer, pl_module)  # stays on the device
        self.above = torch.where(above, self.above + 1, 0)
        self.reached = (self.above >= self.patience) | self.reached
        self.unchecked_steps += 1
        if self.unchecked_steps >= self.check_every_n_steps:
            self.check_loss_ceiling(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.unchecked_steps:  # every rank ends the epoch after the same number of steps
            self.check_loss_ceiling(trainer, pl_module)

    def check_loss_ceiling(self, trainer, pl_module) -> None:
        """The read-back: one host read of the flag, reduced across DDP ranks (any rank decides)."""
        self.unchecked_steps = 0
        here = bool(self.reached)
        self.reached = False
        if not trainer.strategy.reduce_boolean_decision(here, all=False):
            return
        ceiling = self.ceiling(trainer, pl_module)
        where = f" {float(trainer.callback_metrics['train/loss']):.4g}" if here else ""
        message = (
            f"divergence: train/loss{where} above the ceiling {ceiling:.4g} for {self.patience} consecutive "
            f"steps{'' if here else ' on another DDP rank'} (found at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}); training diverged: lower algo.inner_lr (now "
            f"{getattr(pl_module, 'inner_lr', '?')}) or algo.meta_lr (now {getattr(pl_module, 'meta_lr', '?')}). "
            f"The ceiling is callbacks.divergence.max_loss"
        )
        if self.on_loss_ceiling == "error":
            raise DivergenceError(message)  # on every rank alike
        if self.on_loss_ceiling == "stop":
            message += "; training was stopped here"
            trainer.should_stop = True
        else:  # warn: count a new streak from here
            self.above = 0
        self.record(message)

    def at_chance(self, metrics: Mapping[str, Any], stage: str, ways: int) -> str | None:
        """Whether the logged ``metrics`` (``trainer.callback_metrics``) put ``stage``'s accuracy at chance."""
        acc, ci = metrics.get(f"{stage}/acc"), metrics.get(f"{stage}/acc_ci95")
        if acc is None or ci is None:
            return None
        acc, ci = float(acc), float(ci)
        if not math.isfinite(acc):
            return None
        chance = 1.0 / ways
        if abs(acc - chance) > ci + 1e-6:  # accuracies are float32 means: 0.2 reads 0.20000000298
            return None
        return f"chance level: {stage}/acc {acc:.4f} ± {ci:.4f} (95% CI) contains chance level 1/{ways} = {chance:.4f}"

    def on_validation_end(self, trainer, pl_module) -> None:
        ways = self.ways(trainer, pl_module)
        if ways is None or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if trainer.global_step < self.chance_after_steps:
            return
        found = self.at_chance(trainer.callback_metrics, "val", ways)
        if found is None:
            return
        message = (
            f"{found} after {trainer.global_step} training steps: training never left chance level "
            f"(check algo.inner_lr / algo.meta_lr and the data)"
        )
        if self.on_chance == "stop":
            message += "; training was stopped here"
            trainer.should_stop = True
        self.record(message)

    def on_test_end(self, trainer, pl_module) -> None:
        ways = self.ways(trainer, pl_module)
        found = self.at_chance(trainer.callback_metrics, "test", ways) if ways else None
        if found is not None:
            self.record(f"{found}: the test score is no better than guessing")

    def state_dict(self) -> dict[str, Any]:
        return {"above": int(self.above), "run_warnings": list(self.run_warnings)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.above = state_dict.get("above", 0)
        self.run_warnings = list(state_dict.get("run_warnings", []))
