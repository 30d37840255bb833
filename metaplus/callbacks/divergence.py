"""Lightning callbacks of metaplus (added through the ``callbacks`` config group).

:class:`RNGStateCheckpoint` makes ``ckpt_path=...`` resume *exactly*. Lightning's checkpoints hold
the weights, optimizer, schedulers and loop counters, and training tasks are drawn from generators
seeded by (seed, epoch, index), but the process-wide random generators are not saved: anything that
draws from them during training (dropout, Gumbel noise, the seed each DataLoader iterator draws)
would continue from ``seed_everything``'s state after a resume instead of where the run stopped.
"""
from __future__ import annotations

import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from metaplus.atomic import save_torch_atomic
from metaplus.errors import check, check_choice, check_int


def collect_rng_states() -> dict[str, Any]:
    """The global generators' states as tensors, tuples and ints only, so that checkpoints still load
    with ``torch.load(weights_only=True)`` (PyTorch's default)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                         numpy["has_gauss"], numpy["cached_gaussian"]))
    random.setstate(states["python"])
    cuda = states.get("cuda")
    # A checkpoint from another number of GPUs (or from a CPU run) cannot say what each device's
    # generator held: those keep their seeded state.
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RNGStateCheckpoint(Callback):
    """Saves the global RNG states (torch, CUDA, NumPy, Python) in every checkpoint (key
    ``rng_states``) and restores them when training resumes from it.

    Only ``fit`` restores them: evaluating a checkpoint draws its episodes from fixed generators and
    must not rewind the process's generators. Under DDP every rank is seeded alike by
    ``seed_everything`` and the checkpoint written by rank 0 is restored on every rank, as in an
    uninterrupted run.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Written after the epoch's last draw (the checkpoint callbacks run at the end of the epoch).
        checkpoint["rng_states"] = collect_rng_states()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        # Called when fit restores a checkpoint, before the first training batch is drawn.
        if trainer.state.fn == TrainerFn.FITTING and "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])


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
                logger.log_metrics({"time/train_s": self.train_seconds, "epoch": trainer.current_epoch},
                                   step=trainer.global_step)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.epoch_start is not None:  # an epoch without validation
            self.train_seconds += time.perf_counter() - self.epoch_start
            self.epoch_start = None

    def state_dict(self) -> dict[str, float]:
        return {"train_seconds": self.train_seconds}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.train_seconds = state_dict["train_seconds"]


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

    def __init__(self, max_loss: float | str = "auto", patience: int = 3, on_loss_ceiling: str = "stop",
                 chance_after_steps: int = 200, on_chance: str = "warn", check_every_n_steps: int = 10):
        check("max_loss", max_loss, max_loss == "auto" or (isinstance(max_loss, (int, float))
                                                             and not isinstance(max_loss, bool) and max_loss > 0),
              "'auto' or a number > 0")
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
        where = (f" {float(trainer.callback_metrics['train/loss']):.4g}" if here else "")
        message = (f"divergence: train/loss{where} above the ceiling {ceiling:.4g} for {self.patience} consecutive "
                   f"steps{'' if here else ' on another DDP rank'} (found at epoch {trainer.current_epoch}, step "
                   f"{trainer.global_step}); training diverged: lower algo.inner_lr (now "
                   f"{getattr(pl_module, 'inner_lr', '?')}) or algo.meta_lr (now {getattr(pl_module, 'meta_lr', '?')}). "
                   f"The ceiling is callbacks.divergence.max_loss")
        if self.on_loss_ceiling == "error":
            raise DivergenceError(message)  # on every rank alike
        if self.on_loss_ceiling == "stop":
            message += "; training was stopped here"
            trainer.should_stop = True
        else:  # warn: count a new streak from here
            self.above = 0
        self.record(message)

    def at_chance(self, pl_module, stage: str, ways: int) -> str | None:
        results = getattr(pl_module, "eval_results", {}).get(stage, {})
        acc, ci = results.get(f"{stage}/acc"), results.get(f"{stage}/acc_ci95")
        if acc is None or ci is None or not math.isfinite(acc):
            return None
        chance = 1.0 / ways
        if abs(acc - chance) > ci + 1e-6:  # accuracies are float32 means: 0.2 reads 0.20000000298
            return None
        return (f"chance level: {stage}/acc {acc:.4f} ± {ci:.4f} (95% CI) contains chance level 1/{ways} = "
                f"{chance:.4f}")

    def on_validation_end(self, trainer, pl_module) -> None:
        ways = self.ways(trainer, pl_module)
        if ways is None or trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        if trainer.global_step < self.chance_after_steps:
            return
        found = self.at_chance(pl_module, "val", ways)
        if found is None:
            return
        message = (f"{found} after {trainer.global_step} training steps: training never left chance level "
                   f"(check algo.inner_lr / algo.meta_lr and the data)")
        if self.on_chance == "stop":
            message += "; training was stopped here"
            trainer.should_stop = True
        self.record(message)

    def on_test_end(self, trainer, pl_module) -> None:
        ways = self.ways(trainer, pl_module)
        found = self.at_chance(pl_module, "test", ways) if ways else None
        if found is not None:
            self.record(f"{found}: the test score is no better than guessing")

    def state_dict(self) -> dict[str, Any]:
        return {"above": int(self.above), "run_warnings": list(self.run_warnings)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.above = state_dict.get("above", 0)
        self.run_warnings = list(state_dict.get("run_warnings", []))


# -- restarts and preemption -----------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, made atomic: each checkpoint is written to a temporary file in
    its folder and renamed over the target (:mod:`metaplus.atomic`), so a run killed while saving leaves the
    previous ``last.ckpt`` intact instead of half a file that the next resume cannot read.
    Added to the trainer through ``trainer.plugins`` (conf/trainer/default.yaml)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        save_torch_atomic(checkpoint, path, fsync=True)


def checkpoint_damage(path: str | os.PathLike) -> str | None:
    """None when ``path`` loads as a checkpoint; else why not. Loaded as Lightning will load it, with
    ``mmap`` so the tensors are not read: a truncated copy (no zip central directory) or a damaged
    pickle fails here with the file named, instead of deep inside ``trainer.fit``."""
    try:
        torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as error:  # what torch raises for a damaged file varies (RuntimeError, OSError, EOFError, ...)
        return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}".rstrip(": ")
    return None


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
            check("signals", name, isinstance(name, str) and hasattr(signal_module, name), "signal names such as SIGUSR2")
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
            logging.getLogger("metaplus").warning(f"{why}: saved {path} at epoch {trainer.current_epoch}, step "
                                                  f"{trainer.global_step}; rerun the same command in the same run "
                                                  f"directory to resume (resume: auto)")

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
