"""Side-by-side timings of Conv-4's kernel-level choices (issue 26), on a MAML++ meta-iteration.

Each comparison runs its variants in one process, interleaved A B B A A B ... (so a change of the
machine's load hits both alike), a few meta-iterations each, after one warm-up iteration per variant;
it reports the median s/iteration (wall clock and this process's CPU time) and B's time over A's.
The meta-batches are random tensors of the setting's shapes (the cost does not depend on the pixels).

    python bench/kernels.py pool_order --setting mamlpp_omniglot_5w1s          # activation->pool vs pool->activation
    python bench/kernels.py channels_last --setting mamlpp_miniimagenet_5w1s   # NCHW vs channels-last
    python bench/kernels.py channels_last --setting mamlpp_miniimagenet_5w1s --override data.image_size=32
    python bench/kernels.py threads --setting mamlpp_miniimagenet_5w1s         # 1 vs 2 threads (tasks in turn, at once)
    python bench/kernels.py allocator --setting mamlpp_miniimagenet_5w1s       # glibc defaults vs metaplus.allocator
    python bench/kernels.py utilisation --setting mamlpp_miniimagenet_5w1s     # GFLOP/iteration, GFLOP/s, peak
    python bench/kernels.py grouped --setting maml_omniglot_5w1s --tasks 1 2 4 8 16 32 --profile 8
                                          # default engine vs vmap engine vs grouped convolutions, per meta-batch

``allocator`` runs each variant in its own child process (the allocator is set at process start and
the peak RSS is per process, read by the parent with ``os.wait4``), children alternating A B A B.
``grouped`` interleaves three variants (A B C, C B A, ...) of one learner per meta-batch size T
(``--tasks``): the default engine's per-task loop, the vmap engine and the grouped-convolution
formulation (metaplus/inner/grouped.py), one line per T (``--variants`` picks some, the default engine
always among them: the ratios are to it); ``--profile T`` then profiles one meta-iteration of each
variant at that T (torch.profiler, top operators by self CPU time) into that T's line.
Prints one JSON line per comparison; ``--out FILE`` appends it there.
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
from metaplus.benchmarking.processes import measured  # noqa: E402 (after the path is set)
from metaplus.benchmarking.settings import SETTINGS  # noqa: E402

COMPARISONS = ("pool_order", "channels_last", "threads", "allocator", "utilisation", "grouped")
#: Settings of this script beside the shared table (metaplus/benchmarking/settings.py): MAML's Omniglot
#: 5w1s preset exactly as composed (Conv-4 64 ReLU, 28x28, 1 query/class, 1 second-order inner step).
LOCAL_SETTINGS = {
    "maml_omniglot_5w1s": ("MAML Omniglot 5w1s, the preset as composed", ["experiment=omniglot_5w1s"]),
}
ALL_SETTINGS = {**SETTINGS, **LOCAL_SETTINGS}


def make_learner(setting: str, overrides: list[str] = ()):
    """The setting's learner (its real config, plus ``overrides``) and a meta-batch maker of its shapes."""
    import torch

    from metaplus.compose import compose_config
    from metaplus.config import instantiate_group
    from metaplus.data.episodes import TaskBatch
    from metaplus.nn.init_from import build_backbone
    from metaplus.testing.engines import at_epoch

    cfg = compose_config([*ALL_SETTINGS[setting][1], *overrides], REPO / "outputs" / "bench" / "kernels")
    torch.manual_seed(0)
    learner = instantiate_group(cfg.algo, "algo", backbone=build_backbone(cfg.model), task_type="classification")
    at_epoch(learner, 0)  # an idle Trainer at epoch 0 (MSL's weights), plain backward
    ways, shots, queries = int(cfg.data.ways), int(cfg.data.shots), int(cfg.data.queries)
    tasks, shape = int(cfg.data.meta_batch_size), tuple(cfg.data.input_shape)

    def batch(seed: int) -> TaskBatch:
        g = torch.Generator().manual_seed(seed)
        labels = lambda k: torch.arange(ways).repeat_interleave(k).repeat(tasks, 1)
        images = lambda k: torch.randn(tasks, ways * k, *shape, generator=g)
        return TaskBatch(
            support_x=images(shots),
            support_y=labels(shots),
            query_x=images(queries),
            query_y=labels(queries),
            index=torch.arange(tasks),
        )

    return learner, batch


def meta_iteration(learner, optimizer, batch) -> None:
    """One training step as ``EpisodicLearner.training_step`` takes it (``accumulate_meta_batch``: per-task
    meta-backward, on worker threads where ``algo.task_workers`` applies; a batched engine: one call and
    one backward per chunk of tasks), Adam."""
    optimizer.zero_grad()
    learner.accumulate_meta_batch(batch)
    optimizer.step()


def timed(work, iterations: int) -> tuple[list[float], list[float]]:
    wall, cpu = [], []
    for _ in range(iterations):
        t0, c0 = time.perf_counter(), time.process_time()
        work()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def variants(comparison: str, learner) -> dict:
    """name -> a function that puts ``learner`` in that variant (A first)."""
    import torch

    def pool_first(on: bool):
        def apply():
            for block in learner.backbone.blocks:
                block.pool_first = on

        return apply

    def channels_last(on: bool):
        return lambda: setattr(learner.backbone, "channels_last", on)

    def threads(n: int, workers: int | None = None):
        def apply():
            torch.set_num_threads(n)
            learner.task_workers = workers

        return apply

    return {
        "pool_order": {"activation_then_pool": pool_first(False), "pool_then_activation": pool_first(True)},
        "channels_last": {"nchw": channels_last(False), "channels_last": channels_last(True)},
        "threads": {
            "1_thread": threads(1),
            "2_threads_one_task_at_a_time": threads(2, 1),  # before algo.task_workers
            "2_threads_2_task_workers": threads(2, 2),  # the default (algo.task_workers=null) on 2 cores
        },
    }[comparison]


def interleaved(args) -> dict:
    """Variants A and B of one learner in this process, in the order A B B A A B B A ... (glibc set as a
    run sets it unless --no-malloc-keep-buffers; rows before 2026-12-07's third session ran with glibc's
    defaults)."""
    import torch

    from metaplus.allocator import configure_allocator

    applied = configure_allocator(args.malloc_keep_buffers)
    torch.set_num_threads(args.threads)
    learner, batch = make_learner(args.setting, args.override)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    chosen = variants(args.comparison, learner)
    names = list(chosen)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for name in names:  # warm-up per variant: oneDNN primitives, the allocator's first growth
        chosen[name]()
        meta_iteration(learner, optimizer, batch(0))
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            chosen[name]()
            wall, cpu = timed(lambda r=repeat: meta_iteration(learner, optimizer, batch(r + 1)), args.iterations)
            times[name]["wall"] += wall
            times[name]["cpu"] += cpu
    return {**summary(args, times), "allocator": applied}


def summary(args, times: dict) -> dict:
    """Medians, and each later variant's time over the first's."""
    a, *others = list(times)
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    ratios = {}
    for b in others:
        ratios[f"{b}_over_{a}"] = round(median[b]["wall"] / median[a]["wall"], 3)
        ratios[f"{b}_over_{a}_cpu"] = round(median[b]["cpu"] / median[a]["cpu"], 3)
    return {
        "comparison": args.comparison,
        "setting": args.setting,
        "overrides": args.override,
        "threads": args.threads,
        "repeats": args.repeats,
        "iterations_per_repeat": args.iterations,
        "median_s_per_iteration": {n: round(m["wall"], 3) for n, m in median.items()},
        "median_cpu_s_per_iteration": {n: round(m["cpu"], 3) for n, m in median.items()},
        **ratios,
        "times": {n: {k: [round(x, 3) for x in v] for k, v in t.items()} for n, t in times.items()},
    }


def utilisation_row(args) -> dict:
    """FLOPs of one meta-iteration (FlopCounterMode over the step), its median time, the matmul peak of
    this process with the same threads, and the utilisation by wall clock (against the wall-clock peak)
    and by CPU time (against the peak per CPU second: on a shared machine, the rate while running)."""
    import torch

    from metaplus.allocator import configure_allocator
    from metaplus.benchmarking.flops import count_flops, matmul_peak_gflops, utilisation

    # as a run trains (malloc_keep_buffers defaults to true): set before the first large allocation
    applied = configure_allocator(True)
    torch.set_num_threads(args.threads)
    learner, batch = make_learner(args.setting, args.override)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    flops = count_flops(meta_iteration, learner, optimizer, batch(0))  # also the warm-up
    wall, cpu = timed(lambda: meta_iteration(learner, optimizer, batch(1)), args.iterations * args.repeats)
    peak, peak_cpu = matmul_peak_gflops(), matmul_peak_gflops(clock=time.process_time)
    s_wall, s_cpu = statistics.median(wall), statistics.median(cpu)
    return {
        "comparison": "utilisation",
        "setting": args.setting,
        "overrides": args.override,
        "threads": args.threads,
        "allocator": applied,
        "gflop_per_iteration": round(flops / 1e9, 3),
        "median_s_per_iteration": round(s_wall, 3),
        "median_cpu_s_per_iteration": round(s_cpu, 3),
        "peak_gflops": round(peak, 2),
        "peak_gflops_per_cpu_s": round(peak_cpu, 2),
        "utilisation": round(utilisation(flops, s_wall, peak)["utilisation"], 3),
        "utilisation_cpu_time": round(utilisation(flops, s_cpu, peak_cpu)["utilisation"], 3),
        "times": {"wall": [round(x, 3) for x in wall], "cpu": [round(x, 3) for x in cpu]},
    }


def allocator_child(args) -> None:
    """One variant of the allocator comparison in this fresh process: JSON of its times to --child-out."""
    import torch

    from metaplus.allocator import configure_allocator

    applied = configure_allocator(args.child == "keep_buffers")
    torch.set_num_threads(args.threads)
    learner, batch = make_learner(args.setting, args.override)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    meta_iteration(learner, optimizer, batch(0))  # warm-up
    wall, cpu = timed(lambda: meta_iteration(learner, optimizer, batch(1)), args.iterations)
    Path(args.child_out).write_text(json.dumps({"wall": wall, "cpu": cpu, "applied": applied}))


def allocator_comparison(args) -> dict:
    times = {name: {"wall": [], "cpu": []} for name in ("glibc_default", "keep_buffers")}
    peaks = {name: [] for name in times}
    out = REPO / "outputs" / "bench" / "kernels"
    out.mkdir(parents=True, exist_ok=True)
    for repeat in range(args.repeats):
        for name in list(times) if repeat % 2 == 0 else list(times)[::-1]:
            result = out / f"allocator-{name}-{repeat}.json"
            command = [sys.executable, __file__, "allocator", "--setting", args.setting, "--threads", str(args.threads)]
            command += ["--iterations", str(args.iterations), "--child", name, "--child-out", str(result)]
            command += [f"--override={override}" for override in args.override]
            peaks[name].append(measured(command, f"allocator {name}", cwd=REPO))
            record = json.loads(result.read_text())
            times[name]["wall"] += record["wall"]
            times[name]["cpu"] += record["cpu"]
    row = summary(args, times)
    row["peak_rss_gb"] = {name: peaks[name] for name in peaks}
    row["median_peak_rss_gb"] = {name: statistics.median(v) for name, v in peaks.items()}
    return row


GROUPED_VARIANTS = ("default", "vmap", "grouped")


def engines(learner, names) -> dict:
    """The inner-loop formulations ``names`` of ``grouped``: name -> a function that gives ``learner`` it."""
    from metaplus.inner import BatchedAdapt
    from metaplus.inner.grouped import GroupedAdapt

    default = learner.inner
    every = {
        "default": lambda: setattr(learner, "inner", default),
        "vmap": lambda: setattr(learner, "inner", BatchedAdapt()),
        "grouped": lambda: setattr(learner, "inner", GroupedAdapt()),
    }
    return {name: every[name] for name in GROUPED_VARIANTS if name in names}


def top_operators(work, count: int = 12) -> list[dict]:
    """One run of ``work`` under torch.profiler: the ``count`` operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        work()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [
        {
            "op": e.key,
            "calls": e.count,
            "self_cpu_s": round(e.self_cpu_time_total / 1e6, 3),
            "share": round(e.self_cpu_time_total / total, 3),
        }
        for e in events[:count]
    ]


def grouped_comparison(args) -> list[dict]:
    """Default engine, vmap engine and grouped convolutions, one row per meta-batch size of ``--tasks``."""
    import torch

    from metaplus.allocator import configure_allocator

    # as a run trains (malloc_keep_buffers, default true), before the first large allocation: without it
    # glibc maps every buffer over 32 MiB afresh (page faults), and the grouped maps are T times larger
    applied = configure_allocator(args.malloc_keep_buffers)
    torch.set_num_threads(args.threads)
    rows = []
    for tasks in args.tasks:
        rows.append({**grouped_row(args, tasks), "allocator": applied})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def grouped_row(args, tasks: int) -> dict:
    """The three formulations on one learner with a meta-batch of ``tasks``, interleaved A B C C B A ..."""
    import torch

    load = os.getloadavg()[0]
    learner, batch = make_learner(args.setting, [*args.override, f"data.meta_batch_size={tasks}"])
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    chosen = engines(learner, args.variants)
    names = list(chosen)
    times = {name: {"wall": [], "cpu": []} for name in names}
    for name in names:  # warm-up per variant
        chosen[name]()
        meta_iteration(learner, optimizer, batch(0))
    for repeat in range(args.repeats):
        for name in names if repeat % 2 == 0 else names[::-1]:
            chosen[name]()
            wall, cpu = timed(lambda r=repeat: meta_iteration(learner, optimizer, batch(r + 1)), args.iterations)
            times[name]["wall"] += wall
            times[name]["cpu"] += cpu
    median = {name: {k: statistics.median(v) for k, v in t.items()} for name, t in times.items()}
    row = {
        "comparison": "grouped",
        "setting": args.setting,
        "overrides": args.override,
        "tasks": tasks,
        "threads": args.threads,
        "load_at_start": round(load, 2),
        "repeats": args.repeats,
        "iterations_per_repeat": args.iterations,
        "median_s_per_iteration": {n: round(m["wall"], 3) for n, m in median.items()},
        "median_cpu_s_per_iteration": {n: round(m["cpu"], 3) for n, m in median.items()},
        **{f"{n}_over_default_cpu": round(median[n]["cpu"] / median["default"]["cpu"], 3) for n in names[1:]},
        **{f"{n}_over_default": round(median[n]["wall"] / median["default"]["wall"], 3) for n in names[1:]},
        "times": {n: {k: [round(x, 3) for x in v] for k, v in t.items()} for n, t in times.items()},
    }
    if tasks == args.profile:
        row["top_operators"] = {}
        for name in names:
            chosen[name]()
            row["top_operators"][name] = top_operators(lambda: meta_iteration(learner, optimizer, batch(99)))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("comparison", choices=COMPARISONS)
    parser.add_argument("--setting", choices=sorted(ALL_SETTINGS), default="mamlpp_omniglot_5w1s")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (threads: 1 vs 2 regardless)")
    parser.add_argument("--repeats", type=int, default=4, help="A/B rounds (allocator: child processes per variant)")
    parser.add_argument("--iterations", type=int, default=2, help="timed meta-iterations per variant and round")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="a config override on top of the setting's, e.g. data.image_size=32",
    )
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 2, 4, 8], help="grouped: the meta-batch sizes")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=GROUPED_VARIANTS,
        default=list(GROUPED_VARIANTS),
        help="grouped: the formulations to run (default first; e.g. leave vmap out where it does not fit in memory)",
    )
    parser.add_argument(
        "--malloc-keep-buffers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="glibc set as a run sets it (metaplus.allocator; --no-malloc-keep-buffers: glibc defaults); "
        "not for allocator, which compares both",
    )
    parser.add_argument("--profile", type=int, help="grouped: profile every variant once at this T (top operators)")
    parser.add_argument("--out", type=Path, help="append the JSON line to this file")
    parser.add_argument("--child", choices=["glibc_default", "keep_buffers"], help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if "default" not in args.variants:
        parser.error(f"--variants {' '.join(args.variants)} is invalid: must include default (the ratios are to it)")
    if args.child:
        return allocator_child(args)
    if args.comparison == "grouped":  # one line per meta-batch size, each printed as it is measured
        rows = grouped_comparison(args)
    else:
        measure = {"allocator": allocator_comparison, "utilisation": utilisation_row}.get(args.comparison, interleaved)
        rows = [measure(args)]
        print(json.dumps(rows[0]), flush=True)
    if args.out:
        with args.out.open("a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    main()
