"""Exact resume: the process-wide random generators' states saved in and restored from checkpoints.

:class:`RNGStateCheckpoint` makes ``ckpt_path=...`` resume *exactly*. Lightning's checkpoints hold
the weights, optimizer, schedulers and loop counters, and training tasks are drawn from generators
seeded by (seed, epoch, index), but the process-wide random generators are not saved: anything that
draws from them during training (dropout, Gumbel noise, the seed each DataLoader iterator draws)
would continue from ``seed_everything``'s state after a resume instead of where the run stopped.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn


def collect_rng_states() -> dict[str, Any]:
    """The global generators' states as tensors, tuples and ints only, so that checkpoints still load
    with ``torch.load(weights_only=True)`` (PyTorch's default)."""
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state(
        (
            numpy["kind"],
            numpy["keys"].numpy().astype(np.uint32),
            numpy["pos"],
            numpy["has_gauss"],
            numpy["cached_gaussian"],
        )
    )
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
