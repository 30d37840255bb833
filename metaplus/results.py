"""``results.json``: final metrics (named as logged), their CIs, the resolved config, versions.

Written atomically (temporary file then rename) so an interrupted run never leaves half a file.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

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
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=False, default=str)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_results(output_dir: Path, metrics: dict[str, Any], config: dict, seed: int, wall_time_s: float,
                  extra: dict[str, Any] | None = None) -> Path:
    payload = {**metrics, "seed": seed, "wall_time_s": round(wall_time_s, 2), **(extra or {}),
               "versions": versions(), "config": config}
    path = Path(output_dir) / "results.json"
    write_json_atomic(path, payload)
    return path
