"""Running a (row, seed): ``python train.py`` in the checkout, skipped when done, resumed when interrupted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from metaplus.reproduce import locations
from metaplus.reproduce.locations import relative
from metaplus.reproduce.planner import TEST_EPISODES
from metaplus.reproduce.records import write_summary
from metaplus.reproduce.registry import Row

COMMON = [
    f"data.test_episodes={TEST_EPISODES}",
    "logger=csv",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
]


def run_env(threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
    if "METAPLUS_DATA" not in env:  # ../shared/data beside the checkout (or beside its worktree folder)
        shared = next(
            (
                p / "shared" / "data"
                for p in (locations.REPO.parent, locations.REPO.parent.parent)
                if (p / "shared" / "data").is_dir()
            ),
            None,
        )
        if shared is not None:
            env["METAPLUS_DATA"] = str(shared)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(locations.REPO), env.get("PYTHONPATH")]))
    return env


def run_train(overrides: Sequence[str], threads: int, log: Path) -> None:
    command = [sys.executable, "train.py", *overrides]
    with log.open("a") as handle:
        proc = subprocess.run(
            command, cwd=locations.REPO, env=run_env(threads), stdout=handle, stderr=subprocess.STDOUT
        )
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"train.py {' '.join(overrides)} failed (exit {proc.returncode}):\n{tail}")


def run_dir(row: Row, seed: int, root: Path = locations.RUNS) -> Path:
    return root / row.name / f"seed{seed}"


def seed_state(directory: Path) -> str:
    """done (results or their summary), resume (a last checkpoint), or new."""
    if (directory / "results.json").is_file() or (directory / "summary.json").is_file():
        return "done"
    if (directory / "checkpoints" / "last.ckpt").is_file():
        return "resume"
    return "new"


def launch_overrides(row: Row, seed: int, directory: Path, budget: list[str], trainer: str) -> list[str]:
    return [
        *row.overrides,
        f"seed={seed}",
        *COMMON,
        *budget,
        f"trainer={trainer}",
        f"hydra.run.dir={relative(directory)}",
    ]


def run_seed(
    row: Row, seed: int, budget: list[str], trainer: str, threads: int, plan: dict | None, root: Path = locations.RUNS
) -> str:
    """Train one (row, seed) unless done; resume from last.ckpt with the overrides of its first launch."""
    directory = run_dir(row, seed, root)
    state = seed_state(directory)
    if state == "done":
        print(f"  {row.name} seed {seed}: done, skipped", flush=True)
        return state
    plan_file = directory / "plan.json"
    if state == "resume" and plan_file.is_file():
        overrides = json.loads(plan_file.read_text())["overrides"]
        keep_csv_logs(directory)
        extra = [f"ckpt_path={relative(directory / 'checkpoints' / 'last.ckpt')}"]
    else:
        state = "new"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        overrides = launch_overrides(row, seed, directory, budget, trainer)
        plan_file.write_text(json.dumps({"overrides": overrides, "threads": threads, "plan": plan}, indent=2) + "\n")
        extra = []
    print(
        f"  {row.name} seed {seed}: {'resuming' if extra else 'training'} ({threads} thread(s)): python train.py "
        + " ".join(overrides + extra),
        flush=True,
    )
    run_train(overrides + extra, threads, directory / "stdout.log")
    write_summary(directory, row)
    return state


def keep_csv_logs(directory: Path) -> None:
    """Lightning's CSV logger rewrites csv/metrics.csv: keep the interrupted run's curve beside it."""
    metrics = directory / "csv" / "metrics.csv"
    if metrics.is_file():
        n = len(list((directory / "csv").glob("metrics.before-resume*.csv")))
        metrics.rename(directory / "csv" / f"metrics.before-resume{n}.csv")
