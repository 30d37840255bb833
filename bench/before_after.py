"""This checkout's training speed against another checkout's (e.g. a worktree of an older main), in one run.

For one setting of :data:`metaplus.benchmarking.settings.SETTINGS`, each checkout trains the setting with
``python train.py`` as a user runs it (its own defaults: whatever kernels, layouts and allocator settings
that code has), twice: ``--short`` and ``--long`` meta-iterations, no validation, no test, no checkpoint.
The child's CPU time (user + system, read by the parent with ``os.wait4``) of the long run minus the
short one, over the iterations between them, is the CPU time of one meta-iteration with start-up, data
loading and the first iterations' warm-up cancelled out. Runs alternate A B B A ... (``--rounds``), so
a change of the machine's load hits both codes alike; the medians are reported with every round.

    git worktree add /tmp/main-before <commit>      # the code to compare against
    OMP_NUM_THREADS=1 python bench/before_after.py --baseline /tmp/main-before --setting mamlpp_miniimagenet_5w1s

Prints one JSON object (and appends it to ``--out`` when given). CPU time is the steadier figure on a
shared machine; with one thread per child it is also the wall time an idle core would take.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from metaplus.benchmarking.processes import run_measured_usage  # noqa: E402
from metaplus.benchmarking.settings import SETTINGS  # noqa: E402

QUIET = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "~callbacks.model_checkpoint",
    "+trainer.enable_checkpointing=false",
    "+trainer.limit_val_batches=0",
    "trainer.num_sanity_val_steps=0",
    "test=false",
    "trainer.max_epochs=1",
]


def train_cpu(checkout: Path, overrides: list[str], iterations: int, scratch: Path) -> tuple[float, float]:
    """(CPU seconds, peak RSS GB) of ``python train.py`` in ``checkout`` for ``iterations`` meta-iterations."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    command = [
        sys.executable,
        "train.py",
        *overrides,
        *QUIET,
        f"data.batches_per_epoch={iterations}",
        f"hydra.run.dir={out}",
    ]
    peak, cpu = run_measured_usage(
        command, cwd=checkout, env={"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    )
    return cpu, peak


def commit_of(checkout: Path) -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=checkout, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=checkout, capture_output=True, text=True
    )
    return (done.stdout.strip() or "unknown") + ("+changes" if dirty.stdout.strip() else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", required=True, type=Path, help="the other checkout (a git worktree)")
    parser.add_argument("--setting", default="mamlpp_miniimagenet_5w1s", choices=sorted(SETTINGS))
    parser.add_argument("--short", type=int, default=2, help="meta-iterations of the short run")
    parser.add_argument("--long", type=int, default=6, help="meta-iterations of the long run")
    parser.add_argument(
        "--rounds", type=int, default=2, help="A B B A ... rounds (each: a short and a long run per code)"
    )
    parser.add_argument("--override", action="append", default=[], help="extra train.py overrides for both codes")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (args.baseline / "train.py").is_file():
        parser.error(
            f"--baseline {args.baseline} holds no train.py: give a checkout of metaplus (git worktree add ...)"
        )
    if args.long <= args.short:
        parser.error("--long must be larger than --short")
    overrides = [*SETTINGS[args.setting][1], *args.override]
    codes = {"baseline": args.baseline.resolve(), "this": REPO}
    rounds: list[dict] = []
    start = time.time()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="before_after_") as tmp:
        for r in range(args.rounds):
            order = ["baseline", "this"] if r % 2 == 0 else ["this", "baseline"]
            for name in order:
                short_cpu, _ = train_cpu(codes[name], overrides, args.short, Path(tmp))
                long_cpu, peak = train_cpu(codes[name], overrides, args.long, Path(tmp))
                per_iteration = (long_cpu - short_cpu) / (args.long - args.short)
                rounds.append(
                    {"round": r, "code": name, "cpu_s_per_iteration": round(per_iteration, 3), "peak_rss_gb": peak}
                )
                print(json.dumps(rounds[-1]), flush=True)
    median = {name: statistics.median(x["cpu_s_per_iteration"] for x in rounds if x["code"] == name) for name in codes}
    result = {
        "setting": args.setting,
        "overrides": args.override,
        "threads": int(os.environ.get("OMP_NUM_THREADS", "1")),
        "iterations": [args.short, args.long],
        "baseline_commit": commit_of(codes["baseline"]),
        "this_commit": commit_of(REPO),
        "cpu_s_per_iteration": median,
        "speedup": round(median["baseline"] / median["this"], 3),
        "peak_rss_gb": {name: max(x["peak_rss_gb"] for x in rounds if x["code"] == name) for name in codes},
        "rounds": rounds,
        "load_at_start": round(load, 2),
        "wall_s": round(time.time() - start),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with args.out.open("a") as handle:
            handle.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
