"""Benchmark: one training run on 1 and 2 threads, the meta-batch's tasks one at a time or on worker threads
(``algo.task_workers``, metaplus/algorithms/task_workers.py): seconds per meta-iteration and peak RSS.

Each variant trains the preset through the real Lightning Trainer in a fresh process (``measure_run`` of
bench/memory.py: a callback times every meta-iteration, the parent reads the child's peak RSS), variants
alternating over ``--rounds`` rounds. The first ``--skip`` iterations of each run are dropped: the first
compiles and warms the allocator, and with ``algo.task_workers`` left at null (auto) the first meta-batch
of an epoch runs one task at a time to measure a task's memory.

    python bench/task_workers.py                                        # MAML++ mini-ImageNet and Omniglot 5w1s
    python bench/task_workers.py --settings mamlpp_miniimagenet_5w1s --iterations 6 --rounds 2

Writes bench/results/task_workers.json and .md. Run it on a quiet machine: 2 threads on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from memory import measure_run  # noqa: E402

from metaplus.benchmarking.settings import SETTINGS  # noqa: E402

RESULTS = REPO / "bench" / "results"
VARIANTS = {
    "1 thread": ["threads=1"],
    "2 threads, one task at a time": ["threads=2", "algo.task_workers=1"],
    "2 threads, task workers (default)": ["threads=2"],
}


def measure_setting(setting: str, iterations: int, rounds: int, skip: int) -> dict:
    overrides = [*SETTINGS[setting][1], "trainer.accelerator=cpu", f"data.batches_per_epoch={iterations + skip}"]
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for r in range(rounds):
        for name in VARIANTS if r % 2 == 0 else list(VARIANTS)[::-1]:
            load = os.getloadavg()[0]
            row = measure_run([*overrides, *VARIANTS[name]], label=f"task_workers-{setting}", skip=skip)
            runs[name].append({**row, "load_at_start": round(load, 2)})
            print(
                f"{setting} | {name}: {row['s_per_iteration']:.2f} s/it, peak RSS {row['peak_rss_gb']:.2f} GB",
                flush=True,
            )
    summary = {
        name: {
            "s_per_iteration": round(statistics.median(r["s_per_iteration"] for r in rows), 3),
            "cpu_s_per_iteration": round(statistics.median(r["cpu_s_per_iteration"] for r in rows), 3),
            "peak_rss_gb": round(max(r["peak_rss_gb"] for r in rows), 3),
        }
        for name, rows in runs.items()
    }
    one = summary["1 thread"]["s_per_iteration"]
    for row in summary.values():
        row["speed_up_over_1_thread"] = round(one / row["s_per_iteration"], 2)
    return {"setting": setting, "overrides": overrides, "summary": summary, "runs": runs}


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        "# One run on 1 and 2 threads: tasks one at a time or on worker threads",
        "",
        f"`{command}` (each variant a fresh training process through the Lightning Trainer, alternating; "
        "median s/iteration over rounds, the worst peak RSS). Written by bench/task_workers.py.",
        "",
        "| setting | variant | s/iteration | CPU s/iteration | speed-up over 1 thread | peak RSS GB |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        for name, s in row["summary"].items():
            lines.append(
                f"| {row['setting']} | {name} | {s['s_per_iteration']:.2f} | {s['cpu_s_per_iteration']:.2f} | "
                f"{s['speed_up_over_1_thread']:.2f}x | {s['peak_rss_gb']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["mamlpp_miniimagenet_5w1s", "mamlpp_omniglot_5w1s"])
    parser.add_argument("--iterations", type=int, default=6, help="timed meta-iterations per run")
    parser.add_argument("--skip", type=int, default=2, help="first iterations of each run left untimed")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    command = "python bench/task_workers.py " + " ".join(sys.argv[1:])
    rows = [measure_setting(s, args.iterations, args.rounds, args.skip) for s in args.settings]
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"command": command.strip(), "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    (RESULTS / "task_workers.json").write_text(json.dumps(record, indent=2) + "\n")
    (RESULTS / "task_workers.md").write_text(markdown(rows, command.strip()))
    print(markdown(rows, command.strip()))


if __name__ == "__main__":
    main()
