"""Atomic file writes: the file is written under a temporary name in its own folder, then renamed over
the target (``os.replace``), so a reader (or a rerun after a crash) sees the previous file or the new
one, never half a file; on any failure the temporary file is removed and the previous file is kept.

One helper for results.json (:mod:`metaplus.results`), checkpoints
(:class:`metaplus.callbacks.AtomicCheckpointIO`) and the decoded-image cache (:mod:`metaplus.data.cache`).
The new file gets the mode a plain ``open()`` would give it (0666 less the umask, e.g. 0644), not
mkstemp's private 0600, which would make results and checkpoints unreadable to the rest of a lab group;
a caller may fix the mode instead (the shared image cache is always 0644). No import beyond the standard
library (torch is imported by :func:`save_torch_atomic` only), so leaf packages may use it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def umask_mode() -> int:
    """0o666 less the process's umask: the mode ``open()`` gives a new file."""
    umask = os.umask(0)  # reading the umask means setting it: put it straight back
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_file(
    path: str | os.PathLike, *, text: bool = False, mode: int | None = None, fsync: bool = False
) -> Iterator[IO]:
    """An open file (``text``: str, UTF-8; else bytes) that becomes ``path`` when the block ends without an
    error. ``mode``: the file's permission bits (default: :func:`umask_mode`); ``fsync``: flush it to the
    disk before the rename (checkpoints: a crash right after the rename must not leave an empty file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") if text else os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), umask_mode() if mode is None else mode)
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str, *, mode: int | None = None) -> None:
    """``path``'s new content is ``text`` (UTF-8), written atomically (see :func:`atomic_file`)."""
    with atomic_file(path, text=True, mode=mode) as handle:
        handle.write(text)


def save_torch_atomic(obj: object, path: str | os.PathLike, *, mode: int | None = None, fsync: bool = False) -> None:
    """``torch.save(obj)`` to ``path``, atomically (see :func:`atomic_file`)."""
    import torch  # here, so that the module itself stays free of torch

    with atomic_file(path, mode=mode, fsync=fsync) as handle:
        torch.save(obj, handle)
