"""Training wall time (``time/train_s``), logged at every validation."""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn


class WallClock(Callback):
    """Logs ``time/train_s``: seconds spent in training since ``fit`` started (validation excluded),
    at every validation, so accuracy can be plotted against a CPU/GPU-time budget."""

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.epoch_start: float | None = None

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.epoch_start = time.perf_counter()

    def on_validation_start(self, trainer, pl_module) -> None:
        if self.epoch_start is not None and trainer.state.fn == TrainerFn.FITTING:
            self.train_seconds += time.perf_counter() - self.epoch_start
            self.epoch_start = None

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            for logger in trainer.loggers:
                logger.log_metrics(
                    {"time/train_s": self.train_seconds, "epoch": trainer.current_epoch}, step=trainer.global_step
                )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.epoch_start is not None:  # an epoch without validation
            self.train_seconds += time.perf_counter() - self.epoch_start
            self.epoch_start = None

    def state_dict(self) -> dict[str, float]:
        return {"train_seconds": self.train_seconds}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.train_seconds = state_dict["train_seconds"]
