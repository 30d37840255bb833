"""ResNet-12's cost per MAML meta-iteration on the CPU: seconds per iteration and peak memory (RSS).

    OMP_NUM_THREADS=1 .venv/bin/python bench/resnet12_cost.py --orders first second --iterations 1

(the saved results: 1 iteration per order; a first-order iteration took 212 s of CPU, so more did
not fit the few minutes a benchmark may take on the shared 2-core machine)

Setting: mini-ImageNet 5-way 1-shot, 15 queries per class, 84x84 real images (train split of
$METAPLUS_DATA/miniimagenet, first ``--images-per-class`` images of each class to keep decoding
short), meta-batch 4, 5 inner steps (inner lr 0.01), Adam outer step, ResNet-12 64-160-320-640 with
global average pooling (model=resnet12 defaults). Each order runs in its own process so its peak RSS
(``ru_maxrss``) is its own; the first iteration is timed apart (warm-up: allocator, kernels). Wall
and CPU time are both reported: with one thread on a shared machine, CPU time is what one
uncontended core would take. Progress lines go to stderr as each iteration ends. Writes
bench/results/resnet12_cost_{first,second}.json (one per order, as soon as it is measured) and
their summary bench/results/resnet12_cost.{json,md} (from whichever order files exist).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def measure(order: str, iterations: int, data: Path, cache: Path, images_per_class: int) -> dict:
    from metaplus.algorithms import MAML
    from metaplus.data.episodes import episode_generator
    from metaplus.data.miniimagenet import MiniImageNetTasks
    from metaplus.nn import ResNet12

    start = time.perf_counter()
    source = MiniImageNetTasks(
        5,
        1,
        15,
        root=str(data / "miniimagenet"),
        cache_dir=str(cache),
        max_images_per_class=images_per_class,
        split="train",
    )
    load_s = time.perf_counter() - start
    rss_data_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.manual_seed(0)
    learner = MAML(
        ResNet12(input_shape=[3, 84, 84], output_dim=5),
        "classification",
        inner_steps=5,
        inner_lr=0.01,
        first_order=order == "first",
    )
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    times, cpu_times, losses = [], [], []
    for it in range(iterations):
        tasks = [source.sample(episode_generator("bench-resnet12", it, j)) for j in range(4)]
        tick, cpu_tick = time.perf_counter(), time.process_time()
        optimizer.zero_grad()
        total = 0.0
        for task in tasks:  # one backward per task, as EpisodicLearner.training_step does
            loss = learner.task_loss(task)[0]
            (loss / len(tasks)).backward()
            total += loss.item() / len(tasks)
        optimizer.step()
        times.append(time.perf_counter() - tick)
        cpu_times.append(time.process_time() - cpu_tick)
        losses.append(round(total, 4))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"  {order} order: iteration {it}: {times[-1]:.1f} s wall, {cpu_times[-1]:.1f} s CPU "
            f"(loss {total:.3f}, peak RSS so far {rss:.0f} MB)",
            file=sys.stderr,
            flush=True,
        )
    return dict(
        order=order,
        iterations=iterations,
        seconds=[round(t, 2) for t in times],
        cpu_seconds=[round(t, 2) for t in cpu_times],
        first_iteration_s=round(times[0], 2),
        later_iterations_mean_s=round(sum(times[1:]) / len(times[1:]), 2) if len(times) > 1 else None,
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        rss_after_data_mb=round(rss_data_mb),
        load_s=round(load_s, 2),
        losses=losses,
        parameters=sum(p.numel() for p in learner.backbone.parameters()),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", nargs="+", default=["first", "second"], choices=["first", "second"])
    parser.add_argument(
        "--iterations",
        type=int,
        nargs="+",
        default=[2],
        help="iterations per order (one number for all, or one per order)",
    )
    parser.add_argument("--images-per-class", type=int, default=40)
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("METAPLUS_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("METAPLUS_CACHE", REPO / ".cache")))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:  # one order in this process: its row is written as soon as it is measured
        row = measure(args.orders[0], args.iterations[0], args.data, args.cache, args.images_per_class)
        (args.out / f"resnet12_cost_{row['order']}.json").write_text(json.dumps(row, indent=2) + "\n")
        return
    counts = args.iterations * len(args.orders) if len(args.iterations) == 1 else args.iterations
    for order, iterations in zip(args.orders, counts):
        command = [
            sys.executable,
            __file__,
            "--child",
            "--orders",
            order,
            "--iterations",
            str(iterations),
            "--images-per-class",
            str(args.images_per_class),
            "--data",
            str(args.data),
            "--cache",
            str(args.cache),
            "--out",
            str(args.out),
        ]
        subprocess.run(command, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    rows = [
        json.loads((args.out / f"resnet12_cost_{order}.json").read_text())
        for order in ("first", "second")
        if (args.out / f"resnet12_cost_{order}.json").is_file()
    ]

    environment = dict(
        torch=torch.__version__,
        threads=os.environ.get("OMP_NUM_THREADS", "unset"),
        cpu=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        setting="mini-ImageNet 5w1s, 15 queries/class, 84x84, meta-batch 4, 5 inner steps, "
        "ResNet-12 64-160-320-640 (avg pool), Adam",
    )
    (args.out / "resnet12_cost.json").write_text(
        json.dumps(dict(environment=environment, results=rows), indent=2) + "\n"
    )
    lines = [
        "| order | iterations | wall s per iteration | CPU s per iteration | peak RSS (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        wall = " / ".join(f"{t:.0f}" for t in r["seconds"])
        cpu = " / ".join(f"{t:.0f}" for t in r["cpu_seconds"])
        lines.append(f"| {r['order']} | {r['iterations']} | {wall} | {cpu} | {r['peak_rss_mb']} |")
    (args.out / "resnet12_cost.md").write_text(
        f"ResNet-12 MAML cost: {environment['setting']}; OMP_NUM_THREADS={environment['threads']}, "
        f"{environment['cpus']} CPUs shared with other jobs, torch {environment['torch']}.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
