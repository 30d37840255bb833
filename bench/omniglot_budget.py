"""Benchmark: accuracy against training time on Omniglot under a fixed CPU budget.

Each (algorithm, ways, seed) trains with `train.py` for `--budget-min` minutes of wall time
(Lightning's `max_time`), validating every `--val-every` meta-iterations on fixed episodes (the
`time/train_s` logged by metaplus.callbacks.WallClock gives the x axis), then is tested on the 600
fixed test episodes. Writes the curves (PNG), a per-run JSON, and the summary table from
`python -m metaplus.report` under bench/results/.

Issue 3:  python bench/omniglot_budget.py --algos maml --ways 5 --seeds 1 --budget-min 30
Issue 4:  python bench/omniglot_budget.py --algos maml mamlpp --ways 5 20 --seeds 1 2 3 --budget-min 10 \
              --jobs 2 --queries 1 --val-every 20 --val-episodes 40 --test-episodes 600
          (the run behind bench/results/omniglot_budget*: 2 cores, one torch thread per run, MAML and
          MAML++ of the same seed trained side by side so they share the machine equally)
Reference after full training (MAML paper / MAML++ paper): 5w1s 98.7 / 99.47, 20w1s 95.8 / 97.65.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from metaplus.reproduce.records import validation_curve  # noqa: E402 (after the path is set)
from metaplus.results import portable_path  # noqa: E402 (after the path is set)
from metaplus.threads import available_cores, decide_threads  # noqa: E402 (after the path is set)

RESULTS = REPO / "bench" / "results"

# The MAML paper's Omniglot settings (1 step of 0.4 for 5-way, 5 steps of 0.1 for 20-way) and MAML++'s
# released ones (5 steps, all six fixes, leaky ReLU); 10 / 5 inner steps at test.
SETTINGS = {
    ("maml", 5): [
        "algo=maml",
        "algo.inner_steps=1",
        "algo.inner_lr=0.4",
        "algo.test_inner_steps=10",
        "data.meta_batch_size=32",
    ],
    ("maml", 20): [
        "algo=maml",
        "algo.inner_steps=5",
        "algo.inner_lr=0.1",
        "algo.test_inner_steps=10",
        "data.meta_batch_size=16",
    ],
    ("mamlpp", 5): ["algo=mamlpp", "model.activation=leaky_relu", "data.meta_batch_size=8", "algo.da=false"],
    ("mamlpp", 20): ["algo=mamlpp", "model.activation=leaky_relu", "data.meta_batch_size=8", "algo.da=false"],
}


def run_one(algo: str, ways: int, seed: int, args, sweep: Path) -> dict:
    out = sweep / f"{algo}_{ways}w1s_seed{seed}"
    minutes = args.budget_min
    overrides = [
        *SETTINGS[(algo, ways)],
        "data=omniglot",
        "model=conv4",
        f"data.ways={ways}",
        "data.shots=1",
        f"data.queries={args.queries}",
        f"seed={seed}",
        f"data.batches_per_epoch={args.val_every}",
        "trainer.max_epochs=100000",
        f"+trainer.max_time=00:{minutes // 60:02d}:{minutes % 60:02d}:00",
        f"data.val_episodes={args.val_episodes}",
        f"data.test_episodes={args.test_episodes}",
        "algo.msl_epochs=10",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        f"hydra.run.dir={out}",
        f"threads={args.threads}",
    ]
    env = {**os.environ, "WANDB_MODE": "offline"}
    proc = subprocess.run([sys.executable, "train.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{algo} {ways}-way seed {seed} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    return {
        "algo": algo,
        "ways": ways,
        "seed": seed,
        "curve": validation_curve(out / "csv" / "metrics.csv"),
        "test_acc": results["test/acc"],
        "test_acc_ci95": results["test/acc_ci95"],
        "meta_iterations": results["global_step"],
        "wall_time_s": results["wall_time_s"],
        "run_dir": portable_path(str(out)),
    }


def report_one(algo: str, ways: int, seed: int, args, sweep: Path) -> dict:
    row = run_one(algo, ways, seed, args, sweep)
    print(
        f"{algo:7s} {ways:2d}-way 1-shot seed {seed}: test acc {row['test_acc']:.4f} ± "
        f"{row['test_acc_ci95']:.4f} after {row['meta_iterations']} meta-iterations "
        f"({args.budget_min} min budget)",
        flush=True,
    )
    return row


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ways = sorted({r["ways"] for r in rows})
    fig, axes = plt.subplots(1, len(ways), figsize=(5 * len(ways), 3.5), squeeze=False)
    colours = {"maml": "tab:blue", "mamlpp": "tab:orange"}
    for ax, w in zip(axes[0], ways):
        for r in (r for r in rows if r["ways"] == w):
            xs, ys = zip(*r["curve"]) if r["curve"] else ((), ())
            ax.plot(
                [x / 60 for x in xs], ys, color=colours.get(r["algo"]), alpha=0.8, label=f"{r['algo']} seed {r['seed']}"
            )
        ax.set(title=f"Omniglot {w}-way 1-shot", xlabel="training time (min)", ylabel="val accuracy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["maml", "mamlpp"], choices=["maml", "mamlpp"])
    parser.add_argument("--ways", nargs="+", type=int, default=[5, 20], choices=[5, 20])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--budget-min", type=int, default=10)
    parser.add_argument("--val-every", type=int, default=25, help="meta-iterations between validations")
    parser.add_argument("--val-episodes", type=int, default=100)
    parser.add_argument("--test-episodes", type=int, default=600)
    parser.add_argument("--queries", type=int, default=5, help="query images per class")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads per run (default: OMP_NUM_THREADS, else cores / --jobs)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs trained at once; with 2, MAML and MAML++ of one seed share the CPU side by side",
    )
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    args.threads, why = decide_threads(args.threads, os.environ, available_cores(), args.jobs)
    print(f"threads: {args.threads} per run ({why})", flush=True)
    sweep = REPO / "outputs" / "bench" / f"omniglot-budget{args.tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    # Seed-major order: with --jobs 2 the two algorithms of one (ways, seed) run concurrently, so
    # both see the same machine load and the budget comparison stays fair.
    grid = [(algo, ways, seed) for ways in args.ways for seed in args.seeds for algo in args.algos]
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda job: report_one(*job, args, sweep), grid))
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"omniglot_budget{args.tag}"
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, RESULTS / f"{name}.png")
    subprocess.run(
        [sys.executable, "-m", "metaplus.report", str(sweep), "--out", str(RESULTS / name)], cwd=REPO, check=True
    )
    print(f"saved {RESULTS / (name + '.json')}, {RESULTS / (name + '.png')} and the table in {RESULTS / name}")


if __name__ == "__main__":
    main()
