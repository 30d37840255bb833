"""``results.json``: final metrics (named as logged), their CIs, the resolved config, versions.

Written atomically (temporary file then rename) so an interrupted run never leaves half a file.
No absolute path of the machine that made it (:func:`portable`): files of the run are named relative
to the run directory (``checkpoints/best.ckpt``), data under ``$METAPLUS_DATA`` as
``$METAPLUS_DATA/omniglot``, anything else relative to the directory the run was started from.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from metaplus.atomic import write_text_atomic

PACKAGES = ("torch", "torchvision", "lightning", "learn2learn", "hydra-core", "omegaconf", "wandb", "numpy", "metaplus")


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    commit = git_commit()
    if commit:
        found["metaplus_commit"] = commit
    return found


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=False, default=str) + "\n")


DATA_ENV = "METAPLUS_DATA"


def portable_path(value: str, run_dir: str | os.PathLike | None = None) -> str:
    """``value`` without the machine's absolute prefix when it is an absolute path (else unchanged):
    relative to ``run_dir`` when inside it, ``$METAPLUS_DATA/...`` when inside that, else relative to
    the current working directory (the repository root for train.py and the bench scripts)."""
    if not isinstance(value, str):
        return value
    key, sep, rest = value.partition("=")
    if sep and not key.startswith(os.sep) and rest.startswith(os.sep):  # a Hydra override key=/abs/path
        return f"{key}={portable_path(rest, run_dir)}"
    if not (value.startswith(os.sep) and len(value) > 1):
        return value
    path = os.path.normpath(value)
    bases = [(run_dir, ""), (os.environ.get(DATA_ENV), f"${DATA_ENV}")]
    for base, prefix in bases:
        if base:
            base = os.path.normpath(os.path.abspath(base))
            if path == base or path.startswith(base + os.sep):
                rel = os.path.relpath(path, base)
                return rel if not prefix else (prefix if rel == "." else f"{prefix}/{rel}")
    return os.path.relpath(path, os.getcwd())


def portable(obj: Any, run_dir: str | os.PathLike | None = None) -> Any:
    """``obj`` (JSON-like) with every absolute path string made portable by :func:`portable_path`."""
    if isinstance(obj, dict):
        return {key: portable(value, run_dir) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [portable(value, run_dir) for value in obj]
    if isinstance(obj, os.PathLike):
        obj = os.fspath(obj)
    return portable_path(obj, run_dir) if isinstance(obj, str) else obj


def expand_portable(obj: Any) -> Any:
    """For reading a run back: every ``$METAPLUS_DATA/...`` string expanded (when the variable is set;
    else left as it is, so that a dataset that is not found says where it looked)."""
    if isinstance(obj, dict):
        return {key: expand_portable(value) for key, value in obj.items()}
    if isinstance(obj, list):
        return [expand_portable(value) for value in obj]
    prefix = f"${DATA_ENV}"
    if isinstance(obj, str) and (obj == prefix or obj.startswith(prefix + "/")) and os.environ.get(DATA_ENV):
        return os.environ[DATA_ENV].rstrip("/") + obj[len(prefix) :]
    return obj


def write_results(
    output_dir: Path,
    metrics: dict[str, Any],
    config: dict,
    seed: int,
    wall_time_s: float,
    extra: dict[str, Any] | None = None,
) -> Path:
    payload = {
        **metrics,
        "seed": seed,
        "wall_time_s": round(wall_time_s, 2),
        **(extra or {}),
        "versions": versions(),
        "config": config,
    }
    payload = portable(payload, run_dir=output_dir)
    path = Path(output_dir) / "results.json"
    write_json_atomic(path, payload)
    return path
