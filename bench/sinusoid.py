"""Benchmark: MAML and FOMAML on 5-shot sinusoid regression with the MAML paper's hyperparameters.

Each algorithm runs as its own `train.py` process (inner lr 0.01, 1 inner step, meta-batch 25,
Adam 1e-3, --iterations meta-iterations; the paper used 70,000) and is tested on the 600 fixed test
tasks with 10 inner steps. Prints and saves test MSE +- CI95 after 1 and 10 steps, wall time and peak
RSS, plus the adaptation-curve figure, under bench/results/.

    python bench/sinusoid.py --iterations 70000          # the paper's budget
    python bench/sinusoid.py --iterations 2000 --algos maml   # a quick look
Reference: Meta-SGD paper, 5-shot MAML 1.13 +- 0.18.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from metaplus.results import portable_path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def train(algo: str, iterations: int, shots: int, out: Path, threads: int) -> dict:
    epochs = max(1, iterations // 1000)
    args = [
        sys.executable,
        "train.py",
        f"algo={algo}",
        "data=sinusoid",
        f"data.shots={shots}",
        "data.meta_batch_size=25",
        f"data.batches_per_epoch={iterations // epochs}",
        f"trainer.max_epochs={epochs}",
        "algo.inner_steps=1",
        "algo.test_inner_steps=10",
        "algo.inner_lr=0.01",
        "algo.meta_lr=0.001",
        "data.test_episodes=600",
        "data.val_episodes=200",
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        f"hydra.run.dir={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
    start = time.time()
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{algo} failed:\n{proc.stderr.read().decode()[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    return {
        "algo": algo,
        "shots": shots,
        "iterations": iterations,
        "mse_1step": results["test/mse_by_step"][1],
        "ci95_1step": results["test/mse_ci95_by_step"][1],
        "mse_10step": results["test/mse_by_step"][10],
        "ci95_10step": results["test/mse_ci95_by_step"][10],
        "curve": results["test/mse_by_step"],
        "wall_time_s": round(time.time() - start, 1),
        "s_per_iteration": round(results["wall_time_s"] / iterations, 4),
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "run_dir": portable_path(str(out)),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for row in rows:
        ax.plot(range(len(row["curve"])), row["curve"], marker="o", label=f"{row['algo']} ({row['shots']}-shot)")
    ax.axhline(1.13, color="grey", ls="--", lw=1, label="MAML, Meta-SGD paper")
    ax.set(xlabel="inner steps at test", ylabel="test MSE (600 tasks)", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=70000)
    parser.add_argument("--algos", nargs="+", default=["maml", "fomaml"])
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for algo in args.algos:
        row = train(
            algo, args.iterations, args.shots, REPO / "outputs" / "bench" / f"sinusoid-{algo}-{stamp}", args.threads
        )
        rows.append(row)
        print(
            f"{algo:7s} {args.shots}-shot  MSE after 1 step {row['mse_1step']:.3f} ± {row['ci95_1step']:.3f}  "
            f"after 10 steps {row['mse_10step']:.3f} ± {row['ci95_10step']:.3f}  "
            f"{row['s_per_iteration'] * 1000:.1f} ms/iteration  peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"sinusoid{args.tag}"
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, RESULTS / f"{name}.png")
    print(f"saved {RESULTS / (name + '.json')} and {RESULTS / (name + '.png')}")


if __name__ == "__main__":
    main()
