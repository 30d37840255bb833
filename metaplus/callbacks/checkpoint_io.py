"""Checkpoint files: written atomically, and checked before a resume reads them."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from metaplus.atomic import save_torch_atomic


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
