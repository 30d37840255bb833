"""Restarts and preemption: a resumable ``last.ckpt`` when the job is told to stop (SIGTERM, SIGUSR2)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metaplus.errors import check


class PreemptionCheckpoint(Callback):
    """Leaves a resumable ``last.ckpt`` when the job is told to stop.

    - SIGTERM (what ``kill``, ``scancel`` and SLURM preemption send first): Lightning finishes the
      current training step and raises ``SIGTERMException``; this callback then saves the state to the
      ``ModelCheckpoint``'s ``last.ckpt``, which the rerun resumes from (``resume: auto``).
    - ``signals`` (default ``[SIGUSR2]``, the signal the submitit launcher sends ``signal_delay_s``
      before the time limit): the signal is noted, the state is saved at the end of the current
      training step, then the handler that was installed before (submitit's: requeue the job) runs.

    A checkpoint saved inside an epoch resumes training correctly but not bit-exactly (the rest of
    the epoch draws the epoch's first tasks again: Lightning cannot fast-forward a plain DataLoader);
    the end-of-epoch ``last.ckpt`` (what a SIGKILL'd run resumes from) resumes exactly.
    """

    def __init__(self, signals: list[str] | None = None):
        import signal as signal_module

        names = ["SIGUSR2"] if signals is None else list(signals)
        for name in names:
            check(
                "signals", name, isinstance(name, str) and hasattr(signal_module, name), "signal names such as SIGUSR2"
            )
        self.signal_numbers = [getattr(signal_module, name) for name in names]
        self.previous: dict[int, Any] = {}
        self.pending: int | None = None

    def last_path(self, trainer) -> Path | None:
        callback = trainer.checkpoint_callback
        if callback is None or not callback.dirpath:
            return None
        return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"

    def save(self, trainer, why: str) -> None:
        path = self.last_path(trainer)
        if path is None:
            return
        # Tell ModelCheckpoint this last.ckpt is its own (set before saving: it is part of its state), so a
        # run that goes on after the signal overwrites it at the epoch's end instead of writing
        # last-v1.ckpt beside a stale last.ckpt that resume: auto would pick up.
        trainer.checkpoint_callback.last_model_path = str(path)
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            logging.getLogger("metaplus").warning(
                f"{why}: saved {path} at epoch {trainer.current_epoch}, step "
                f"{trainer.global_step}; rerun the same command in the same run "
                f"directory to resume (resume: auto)"
            )

    def on_fit_start(self, trainer, pl_module) -> None:
        import signal as signal_module
        import threading

        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be installed from the main thread
        for number in self.signal_numbers:
            self.previous[number] = signal_module.getsignal(number)
            signal_module.signal(number, self.note_signal)

    def note_signal(self, signum, frame) -> None:
        self.pending = signum  # acted on at the end of the current step: the state is consistent there

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        noted = self.pending is not None
        if trainer.world_size > 1:
            # A signal may reach one rank only (sbatch --signal, kill and submitit-local reach rank 0),
            # and saving is collective (save_checkpoint waits in a barrier): share the flag every step,
            # as Lightning does for SIGTERM, so every rank saves at the end of the same step.
            noted = trainer.strategy.reduce_boolean_decision(noted, all=False)
        if not noted:
            return
        signum, self.pending = self.pending, None
        self.save(trainer, f"signal {signum}" if signum is not None else "a signal to another rank")
        previous = self.previous.get(signum)
        if callable(previous):  # e.g. submitit's handler: checkpoint the job description and requeue it
            previous(signum, None)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            self.save(trainer, "SIGTERM")

    def teardown(self, trainer, pl_module, stage: str) -> None:
        import signal as signal_module

        for number, handler in self.previous.items():
            if handler is not None:
                signal_module.signal(number, handler)
        self.previous = {}
