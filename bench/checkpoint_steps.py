"""Benchmark: algo.checkpoint_steps (inner-loop activations recomputed in the meta-backward) against
the default, peak RSS and seconds per meta-iteration, one fresh measured process per run
(bench/memory.py's ``measure_run``: the real Trainer, the child's peak RSS read by the parent).

Settings (second order throughout: the presets' ``da_epochs: 0``; MSL on at epoch 0):
- ``conv4_omniglot``: the MAML++ Omniglot 5w1s preset (Conv-4 64 filters, meta-batch 8, 1 query/class);
- ``conv4_miniimagenet``: the MAML++ mini-ImageNet 5w1s preset (Conv-4 48 filters, meta-batch 2,
  15 queries/class);
- ``resnet12_miniimagenet``: the same preset with ``model=resnet12`` (64-160-320-640) at meta-batch 1:
  memory is per task (each task is back-propagated before the next), so meta-batch 1 has the peak of
  meta-batch 2 in half the time;
- ``resnet12_miniimagenet_q5``: the same with 5 queries per class, small enough for the default
  engine to fit beside the other jobs of a 23 GB machine (15 queries took 17.6 GB: docs/speed.md).
mini-ImageNet reads the first 20 images of each training class (``max_images_per_class``): decoding
stays short and the data's share of the RSS small (``rss_before_training_gb``).

    OMP_NUM_THREADS=1 python bench/checkpoint_steps.py --settings conv4_omniglot conv4_miniimagenet
    OMP_NUM_THREADS=1 python bench/checkpoint_steps.py --settings resnet12_miniimagenet --iterations 1 --only on
    OMP_NUM_THREADS=1 python bench/checkpoint_steps.py --settings resnet12_miniimagenet_q5 --iterations 1

``--iterations N``: N timed meta-iterations after one warm-up (N=1: one iteration, warm-up included).
``--only on|off`` measures one side. Rows are added to bench/results/checkpoint_steps.json (a row of
the same setting and side is replaced); bench/results/checkpoint_steps.md holds the figures and commands.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
RESULTS = REPO / "bench" / "results" / "checkpoint_steps.json"

from memory import measure_run  # noqa: E402 (after the path is set)

MINIIMAGENET = ["algo=mamlpp", "data=miniimagenet", "data.source.max_images_per_class=20"]
SETTINGS = {
    "conv4_omniglot": ["algo=mamlpp", "data=omniglot"],
    "conv4_miniimagenet": MINIIMAGENET,
    "resnet12_miniimagenet": [*MINIIMAGENET, "model=resnet12", "data.meta_batch_size=1"],
    "resnet12_miniimagenet_q5": [*MINIIMAGENET, "model=resnet12", "data.meta_batch_size=1", "data.queries=5"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=["conv4_omniglot"])
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-iterations (after one warm-up if > 1)")
    parser.add_argument("--only", choices=["on", "off"], help="measure one side only")
    args = parser.parse_args()
    rows = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    batches = args.iterations + 1 if args.iterations > 1 else 1
    sides = [args.only == "on"] if args.only else [False, True]
    for name in args.settings:
        for on in sides:
            overrides = [
                *SETTINGS[name],
                f"data.batches_per_epoch={batches}",
                f"algo.checkpoint_steps={str(on).lower()}",
            ]
            row = {"setting": name, "checkpoint_steps": on, **measure_run(overrides, label=f"ckpt-{name}-{on}")}
            row.update(overrides=overrides, measured_at=time.strftime("%Y-%m-%d %H:%M"))
            print(
                f"{name:26s} checkpoint_steps={str(on).lower():5s}: {row['s_per_iteration']:8.2f} s/iteration "
                f"({row['cpu_s_per_iteration']:.2f} CPU s), peak RSS {row['peak_rss_gb']:.2f} GB "
                f"(before training {row['rss_before_training_gb']:.2f} GB)",
                flush=True,
            )
            rows = [r for r in rows if (r["setting"], r["checkpoint_steps"]) != (name, on)] + [row]
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(json.dumps(rows, indent=2) + "\n")  # after every run: a long one may be cut short


if __name__ == "__main__":
    main()
