"""Run ``train.py`` (and ``python -m metaplus...``) as a user types it, from a scratch directory.

The command line is the user's, unchanged: no ``hydra.run.dir=`` / ``hydra.sweep.dir=``. The process
starts in ``cwd`` (a test's tmp_path), so its outputs land in ``cwd/outputs/...`` as they would in the
repository, and ``PYTHONPATH`` names this checkout so that every process (submitit's jobs too) imports
this copy of metaplus rather than whichever one the environment installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from metaplus.testing import REPO


def environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": path, **extra}


def python(args: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """``python ARGS`` in ``cwd``; ``train.py`` as the first argument is this checkout's."""
    if args and args[0] == "train.py":
        args = [str(REPO / "train.py"), *args[1:]]
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=environment(**env), capture_output=True, text=True, timeout=timeout
    )


def train(*args: str, cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    return python(["train.py", *args], cwd, timeout, **env)


def only_directory(parent: Path) -> Path:
    """The one directory a command made under ``parent`` (e.g. ``outputs/multiruns``)."""
    found = [p for p in parent.iterdir() if p.is_dir()] if parent.is_dir() else []
    assert len(found) == 1, f"expected one directory under {parent}, found {found}"
    return found[0]
