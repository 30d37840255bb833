"""Benchmark (issue 13): time per meta-iteration against the compute floor, peak memory, and the
share of an epoch that validation costs, for the published few-shot settings, in one run.

For every setting of :data:`SETTINGS` and every engine (``algo.engine=l2l|batched``), a fresh child
process trains through the real Lightning Trainer (one warm-up meta-iteration dropped, then
``--iterations`` timed ones, each from ``on_train_batch_start`` to ``on_train_batch_end``), then
validates a few episodes (first batch dropped as warm-up); its peak RSS is read by the parent
(``metaplus.benchmarking.processes``, ``os.wait4``).

The compute floor (one more child per setting) runs the same backbone (same convolutions, same BN
configuration) on the same meta-batches with no meta-learning machinery: per task, one plain
forward/backward on the support set per inner step, then a forward/backward on the query set once
per query loss the learner takes (every step while MAML++'s multi-step loss is on, as at epoch 0,
else once), then one Adam step. No cloning, no second order, no inner update.

That floor cannot be reached by second-order MAML: the second-order terms are extra convolutions
(the backward of the backward), about as many again. So a second floor, the *meta floor*, computes
the same meta-gradient as the learner (the same derivative order, inner steps, adapted tensors and
query losses) in the fewest lines torch allows: a dict of tensors, ``torch.func.functional_call``,
``torch.autograd.grad(create_graph=...)``, ``p - lr * g``, one backward, one Adam step; no
learn2learn clone, no Lightning loop, no update rule hooks, no metrics. ``ratio_to_meta_floor`` is
what the framework's machinery costs (the target <= 1.1); ``ratio_to_floor`` adds the price of the
derivative order.

    eval_fraction = val_episodes x (s per validation episode) / (batches_per_epoch x s/iteration)

at the setting's own ``data.val_episodes`` and ``data.batches_per_epoch``: the time validation adds
to each epoch, as a fraction of the epoch's training time. Each time is measured twice: wall clock
(``s_per_iteration``, ``floor_s``, ``ratio_to_floor``, ``eval_fraction``) and the process's CPU time
(``cpu_*``), which on a CPU shared with other jobs is the steadier of the two (it does not count
waiting for a core); ``--engine both --first-order-row`` adds the default engine run first order,
which separates the machinery's overhead from the cost of the second-order terms.

    python bench/speed.py --quick                     # a subset, a few minutes on 1 CPU thread
    python bench/speed.py --engine both --iterations 3
    python bench/speed.py --gpu --engine both         # CUDA: device cuda, synchronised timers
    python bench/speed.py --gpu --precision bf16-mixed
    python bench/speed.py --reference-code DIR        # + the MAML++ reference code's rows (a clone of
                                                      #   github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch)

Every engine row also has its floating-point work and how close it runs to the processor's limit
(``metaplus.benchmarking.flops``): ``gflop_per_iteration``, counted with torch's FlopCounterMode over
the real training step of the warm-up meta-iteration (forward, the whole meta-backward with its
second-order terms; convolutions and matrix products), ``gflops_per_s`` at the row's s/iteration,
``peak_gflops``, a 2048x2048 fp32 matmul timed (best of 5) in the same child with the same threads
after training, and ``utilisation`` = achieved / peak. On the CPU also ``cpu_utilisation``: the same
ratio per CPU second (the step's process time against the matmul's), which other jobs on a shared
machine do not inflate. ``--checkpoint-steps-row`` adds the default engine with
``algo.checkpoint_steps=true`` (activations recomputed in the meta-backward: its memory and time).

Writes bench/results/speed.json (one row per setting and engine) and speed.md (``--name``: another
stem). mini-ImageNet is read with at most ``MINI_IMAGES_PER_CLASS`` images per class (image content
does not change the cost of an iteration, and decoding all 60,000 images would dominate a quick run).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from metaplus.benchmarking.commands import public_command  # noqa: E402 (after the path is set)
from metaplus.benchmarking.processes import ChildFailed, measured  # noqa: E402
from metaplus.benchmarking.settings import SETTINGS  # noqa: E402

RESULTS = REPO / "bench" / "results"

QUICK_SETTINGS = ["mamlpp_omniglot_5w1s", "mamlpp_miniimagenet_5w1s"]
# The MAML++ reference code on the same episode shapes (bench/reference_mamlpp.py; its own network,
# the same Conv-4 and switches), timed when --reference-code or METAPLUS_MAMLPP_REFERENCE names it.
REFERENCE_SHAPES: dict[str, list[str]] = {
    "mamlpp_omniglot_5w1s": [
        "--ways",
        "5",
        "--shots",
        "1",
        "--queries",
        "1",
        "--meta-batch",
        "8",
        "--steps",
        "5",
        "--filters",
        "64",
        "--image-shape",
        "1,28,28",
    ],
    "mamlpp_omniglot_5w1s_q15_mb16": [
        "--ways",
        "5",
        "--shots",
        "1",
        "--queries",
        "15",
        "--meta-batch",
        "16",
        "--steps",
        "5",
        "--filters",
        "64",
        "--image-shape",
        "1,28,28",
    ],
    "mamlpp_miniimagenet_5w1s": [
        "--ways",
        "5",
        "--shots",
        "1",
        "--queries",
        "15",
        "--meta-batch",
        "2",
        "--steps",
        "5",
        "--filters",
        "48",
        "--image-shape",
        "3,84,84",
    ],
}
# What each row's engine means. l2l_first_order is a diagnostic: the default engine with the inner
# gradients detached (first order), which separates the machinery's overhead from the cost of the
# second-order terms when compared with the floor.
ENGINES = {
    "l2l": ["algo.engine=l2l"],
    "batched": ["algo.engine=batched"],
    "l2l_first_order": ["algo.engine=l2l", "algo.first_order=true"],
    "l2l_checkpoint_steps": ["algo.engine=l2l", "algo.checkpoint_steps=true"],
}
MEASURE = [
    "logger=none",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "~callbacks.model_checkpoint",
    "+trainer.enable_checkpointing=false",
    "test=false",
    "trainer.num_sanity_val_steps=0",
]


def missing_reason(setting: str) -> str | None:
    """Why a setting cannot run in this checkout (its backbone does not exist yet), else None."""
    if "resnet12" in setting:
        if not hasattr(importlib.import_module("metaplus.nn"), "ResNet12"):
            return "metaplus.nn.ResNet12 does not exist in this checkout"
        if not (REPO / "conf" / "model" / "resnet12.yaml").is_file():
            return "conf/model/resnet12.yaml does not exist in this checkout"
    return None


# -- the child processes -------------------------------------------------------------------------
def device_overrides(args) -> list[str]:
    extra = ["trainer.accelerator=gpu", "trainer.devices=1"] if args.gpu else ["trainer.accelerator=cpu"]
    return extra + ([f"trainer.precision={args.precision}"] if args.precision else [])


def child(args) -> None:
    """One measurement inside a fresh process: ``train`` (an engine) or ``floor``; JSON to args.out."""
    import lightning as L
    import torch

    from metaplus.allocator import configure_allocator
    from metaplus.benchmarking.flops import matmul_peak_gflops
    from metaplus.compose import compose_config
    from metaplus.run import build
    from metaplus.threads import configure_threads

    threads = configure_threads(args.threads, processes=1)
    _, overrides = SETTINGS[args.setting]
    preset = compose_config(overrides, args.out)  # the setting's own epoch size and validation episodes
    per_epoch, val_episodes = int(preset.data.batches_per_epoch), int(preset.data.val_episodes)
    cuda = args.gpu and torch.cuda.is_available()
    if args.gpu and not cuda:
        raise SystemExit("--gpu: torch.cuda.is_available() is False on this machine")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    measure = [
        *MEASURE,
        *device_overrides(args),
        f"data.batches_per_epoch={args.iterations + 1}",
        f"+trainer.limit_val_batches={args.val_batches + 1 if args.child == 'train' else 0}",
        f"+data.eval_batch_size={args.val_batch_size}",
    ]
    if args.child in ("train", "meta_floor"):  # the meta floor follows the engine's derivative order
        measure += ENGINES[args.engine]
    cfg = compose_config([*overrides, *measure], args.out)
    configure_allocator(cfg.get("malloc_keep_buffers", False))  # as a run sets it up (metaplus.threads)
    L.seed_everything(0)
    parts = build(cfg)
    learner, trainer, datamodule = parts["learner"], parts["trainer"], parts["datamodule"]
    record = {
        "threads": threads,
        "batches_per_epoch": per_epoch,
        "val_episodes": val_episodes,
        "meta_batch": int(cfg.data.meta_batch_size),
        "device": "cuda" if cuda else "cpu",
    }
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    if args.child == "train":
        record.update(time_training(trainer, learner, datamodule, sync))
        # After training (the matrices add nothing to the training's peak RSS), same process and threads.
        record["peak_gflops"] = matmul_peak_gflops(device="cuda" if cuda else "cpu", sync=sync)
        if not cuda:  # per CPU second: the rate to set the step's CPU time against on a shared machine
            record["cpu_peak_gflops"] = matmul_peak_gflops(clock=time.process_time)
    elif args.child == "meta_floor":
        record.update(
            time_meta_floor(
                learner,
                datamodule,
                args.iterations,
                torch.device("cuda" if cuda else "cpu"),
                sync,
                cfg.trainer.get("precision"),
            )
        )
    else:
        record.update(
            time_floor(
                learner,
                datamodule,
                args.iterations,
                torch.device("cuda" if cuda else "cpu"),
                sync,
                cfg.trainer.get("precision"),
            )
        )
    if cuda:
        record["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    (args.out / "speed.json").write_text(json.dumps(record))


def time_training(trainer, learner, datamodule, sync) -> dict:
    """Times every meta-iteration; the first (the warm-up, dropped by :func:`steady`) also has its FLOPs
    counted, the whole training step: forward, the meta-backward with its second-order terms, Adam."""
    import lightning as L

    from metaplus.benchmarking.flops import flop_counter

    train, val = Clock(sync), Clock(sync)
    counter, flops = flop_counter(), []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 0:
                counter.__enter__()
            train.start()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            train.stop()
            if batch_idx == 0:
                counter.__exit__(None, None, None)
                flops.append(int(counter.get_total_flops()))

        def on_validation_batch_start(self, trainer, module, batch, *args):
            val.start(per=len(batch))

        def on_validation_batch_end(self, *args):
            val.stop()

    trainer.callbacks.append(Timer())
    trainer.fit(learner, datamodule=datamodule)
    return {
        "train_times": train.wall,
        "train_cpu_times": train.cpu,
        "flops_per_iteration": flops[0],
        "val_episode_times": val.wall,
        "val_episode_cpu_times": val.cpu,
    }


class Clock:
    """Wall time and this process's CPU time (all its threads) of each interval, divided by ``per``.
    On a CPU shared with other jobs the CPU time is the steadier measure: it does not count the time
    the process waits for a core (on a GPU it counts only the host's share)."""

    def __init__(self, sync):
        self.sync, self.wall, self.cpu = sync, [], []

    def start(self, per: int = 1) -> None:
        self.sync()
        self.per, self.t0, self.c0 = per, time.perf_counter(), time.process_time()

    def stop(self) -> None:
        self.sync()
        self.wall.append((time.perf_counter() - self.t0) / self.per)
        self.cpu.append((time.process_time() - self.c0) / self.per)


def time_plain_loop(learner, datamodule, iterations: int, device, sync, precision, task_backward) -> dict:
    """The floors' training loop: ``task_backward(backbone, task)`` per task, one Adam step per meta-batch."""
    import torch

    backbone = learner.backbone.to(device)
    optimizer = torch.optim.Adam(backbone.parameters(), lr=1e-3)
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if precision and "bf16" in str(precision)
        else torch.autocast(device.type, enabled=False)
    )
    batches = iter(datamodule.train_dataloader())
    clock = Clock(sync)
    for _ in range(iterations + 1):
        batch = next(batches)
        clock.start()
        optimizer.zero_grad()
        for b in range(len(batch)):
            with autocast:
                task_backward(backbone, batch[b])
        optimizer.step()
        clock.stop()
    return {"train_times": clock.wall, "train_cpu_times": clock.cpu}


def time_floor(learner, datamodule, iterations: int, device, sync, precision) -> dict:
    """The same backbone on the same meta-batches: plain forward/backward passes, one Adam step."""
    steps = max(learner.inner_steps, 1)
    query_passes = steps if learner.query_step_weights() is not None else 1

    def plain_passes(backbone, task):
        sx, sy, qx, qy = (t.to(device) for t in (task.support_x, task.support_y, task.query_x, task.query_y))
        for step in range(steps):
            learner.loss_fn(backbone(sx, step=step), sy).backward()
        for step in range(steps - query_passes, steps):
            learner.loss_fn(backbone(qx, step=step), qy).backward()

    return {
        **time_plain_loop(learner, datamodule, iterations, device, sync, precision, plain_passes),
        "query_passes": query_passes,
        "support_passes": steps,
    }


def time_meta_floor(learner, datamodule, iterations: int, device, sync, precision) -> dict:
    """The learner's meta-gradient written out by hand: the cost without the framework's machinery."""
    from metaplus.benchmarking.meta_floor import meta_floor_loss  # torch: in the child only, as child() does

    def meta_backward(backbone, task):
        meta_floor_loss(learner, backbone, task, device).backward()

    return {
        **time_plain_loop(learner, datamodule, iterations, device, sync, precision, meta_backward),
        "first_order": learner.training_first_order(),
    }


# -- the parent -----------------------------------------------------------------------------------
def run_child(kind: str, setting: str, engine: str, args) -> dict:
    out = (
        REPO
        / "outputs"
        / "bench"
        / f"speed-{setting}-{kind if kind == 'floor' else f'{kind}-{engine}'}-{time.strftime('%H%M%S')}"
    )
    out.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        "--setting",
        setting,
        "--engine",
        engine,
        "--out",
        str(out),
        "--iterations",
        str(args.iterations),
        "--val-batches",
        str(args.val_batches),
        "--val-batch-size",
        str(args.val_batch_size),
        "--threads",
        str(args.threads),
    ]
    command += (["--gpu"] if args.gpu else []) + (["--precision", args.precision] if args.precision else [])
    peak = measured(command, kind if kind == "floor" else f"{kind} {engine}", cwd=REPO)
    record = json.loads((out / "speed.json").read_text())
    record["peak_rss_gb"] = peak
    return record


def steady(times: list[float]) -> float:
    """Median without the first (warm-up) measurement. The median, because a process that takes on
    gigabytes page-faults them during its first iterations (seconds of system time in the reference
    code at meta-batch 16), a start-up cost a long run does not pay per iteration."""
    return statistics.median(times[1:] or times)


def run_reference(setting: str, args) -> dict:
    """The MAML++ reference code on the setting's shapes, in a child whose peak RSS the parent reads."""
    out = REPO / "outputs" / "bench" / f"speed-{setting}-reference-{time.strftime('%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    # --warmup 0: every iteration is reported and steady() drops the first, as for our own rows.
    command = [
        sys.executable,
        str(REPO / "bench" / "reference_mamlpp.py"),
        "--code",
        str(args.reference_code),
        *REFERENCE_SHAPES[setting],
        "--iterations",
        str(args.iterations + 1),
        "--warmup",
        "0",
        "--threads",
        str(args.threads),
        "--out",
        str(out / "speed.json"),
    ]
    peak = measured(command, "MAML++ reference code", cwd=REPO)
    record = json.loads((out / "speed.json").read_text())
    record["peak_rss_gb"] = peak
    return record


def ratio_fields(s_it: float, cpu_it: float, floor: dict, meta: dict) -> dict:
    """A row's time against both floors, wall clock and CPU time (engine and reference rows alike)."""
    floor_s, floor_cpu = steady(floor["train_times"]), steady(floor["train_cpu_times"])
    meta_s, meta_cpu = steady(meta["train_times"]), steady(meta["train_cpu_times"])
    return {
        "s_per_iteration": round(s_it, 3),
        "floor_s": round(floor_s, 3),
        "ratio_to_floor": round(s_it / floor_s, 3),
        "cpu_s_per_iteration": round(cpu_it, 3),
        "cpu_floor_s": round(floor_cpu, 3),
        "cpu_ratio_to_floor": round(cpu_it / floor_cpu, 3),
        "meta_floor_s": round(meta_s, 3),
        "ratio_to_meta_floor": round(s_it / meta_s, 3),
        "cpu_meta_floor_s": round(meta_cpu, 3),
        "cpu_ratio_to_meta_floor": round(cpu_it / meta_cpu, 3),
    }


def measure_setting(setting: str, engines: list[str], args) -> list[dict]:
    from metaplus.benchmarking.flops import useful_flops, utilisation_fields  # torch: once a row is made

    floor = run_child("floor", setting, "l2l", args)  # the floor has no engine
    floor_s, floor_cpu = steady(floor["train_times"]), steady(floor["train_cpu_times"])
    meta_floors = {}  # per derivative order: the l2l_first_order row has its own meta floor
    rows = []
    for engine in engines:
        order = "first_order" if "algo.first_order=true" in ENGINES[engine] else "default"
        if order not in meta_floors:
            meta_floors[order] = run_child("meta_floor", setting, engine, args)
        meta = meta_floors[order]
        meta_s, meta_cpu = steady(meta["train_times"]), steady(meta["train_cpu_times"])
        train = run_child("train", setting, engine, args)
        s_it, cpu_it = steady(train["train_times"]), steady(train["train_cpu_times"])
        val_s, val_cpu = steady(train["val_episode_times"]), steady(train["val_episode_cpu_times"])
        epoch = train["batches_per_epoch"]
        rows.append(
            {
                "setting": setting,
                "engine": engine,
                **ratio_fields(s_it, cpu_it, floor, meta),
                **utilisation_fields(
                    train["flops_per_iteration"], s_it, train["peak_gflops"], cpu_it, train.get("cpu_peak_gflops")
                ),
                "peak_rss_gb": train["peak_rss_gb"],
                "eval_fraction": round(train["val_episodes"] * val_s / (epoch * s_it), 3),
                "meta_floor_peak_rss_gb": meta["peak_rss_gb"],
                "meta_floor_first_order": meta["first_order"],
                "cpu_eval_fraction": round(train["val_episodes"] * val_cpu / (epoch * cpu_it), 3),
                "s_per_val_episode": round(val_s, 3),
                "val_episodes": train["val_episodes"],
                "batches_per_epoch": train["batches_per_epoch"],
                "meta_batch": train["meta_batch"],
                "floor_peak_rss_gb": floor["peak_rss_gb"],
                "iterations_timed": len(train["train_times"]) - 1,
                "threads": train["threads"],
                "device": train["device"],
                "precision": args.precision or "32-true",
                **(
                    {"peak_gpu_gb": train["peak_gpu_gb"], "floor_peak_gpu_gb": floor["peak_gpu_gb"]}
                    if "peak_gpu_gb" in train
                    else {}
                ),
            }
        )
        print(
            f"{setting:32s} {engine:15s} {s_it:7.3f} s/it  floor {floor_s:7.3f} s  x{s_it / floor_s:5.2f}  "
            f"(CPU time x{cpu_it / floor_cpu:5.2f})  meta floor {meta_s:7.3f} s x{s_it / meta_s:5.2f} "
            f"(CPU time x{cpu_it / meta_cpu:5.2f})  RSS {train['peak_rss_gb']:5.2f} GB  "
            f"eval {rows[-1]['eval_fraction']:.1%}  {rows[-1]['gflops_per_s']:.1f} GFLOP/s of "
            f"{rows[-1]['peak_gflops']:.1f} ({rows[-1]['utilisation']:.1%})",
            flush=True,
        )
    rows = useful_flops(rows)
    if args.reference_code and setting in REFERENCE_SHAPES:
        ref = run_reference(setting, args)
        s_it, cpu_it = steady(ref["train_times"]), steady(ref["train_cpu_times"])
        meta = meta_floors.get("default") or run_child("meta_floor", setting, "l2l", args)
        meta_cpu = steady(meta["train_cpu_times"])
        rows.append(
            {
                "setting": setting,
                "engine": "mamlpp_reference",
                **ratio_fields(s_it, cpu_it, floor, meta),
                "peak_rss_gb": ref["peak_rss_gb"],
                "eval_fraction": None,
                "iterations_timed": len(ref["train_times"]) - 1,
                "threads": ref["threads"],
                "device": "cpu",
                "reference_commit": ref.get("code_commit"),
            }
        )
        print(
            f"{setting:32s} {'mamlpp_reference':15s} {s_it:7.3f} s/it  (CPU time x{cpu_it / meta_cpu:5.2f} the meta "
            f"floor)  RSS {ref['peak_rss_gb']:5.2f} GB",
            flush=True,
        )
    return rows


def markdown(rows: list[dict], skipped: dict[str, str], note: str) -> str:
    lines = [
        "| setting | engine | s/iteration | meta floor s | ratio to meta floor | CPU-time ratio | floor s | "
        "ratio to floor | CPU-time ratio | peak RSS GB | eval fraction | GFLOP/iteration | GFLOP/s | "
        "peak GFLOP/s | utilisation | utilisation per CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        meta = (
            f"{r['meta_floor_s']:.3f} | {r['ratio_to_meta_floor']:.2f} | {r['cpu_ratio_to_meta_floor']:.2f}"
            if "meta_floor_s" in r
            else "n/a | n/a | n/a"
        )
        lines.append(
            f"| {r['setting']} | {r['engine']} | {r['s_per_iteration']:.3f} | {meta} | {r['floor_s']:.3f} | "
            f"{r['ratio_to_floor']:.2f} | {r['cpu_ratio_to_floor']:.2f} | {r['peak_rss_gb']:.2f} | "
            f"{'n/a' if r['eval_fraction'] is None else format(r['eval_fraction'], '.1%')} | "
            + (
                f"{r['gflop_per_iteration']:.2f} | {r['gflops_per_s']:.1f} | {r['peak_gflops']:.1f} | "
                f"{r['utilisation']:.1%} | " + (f"{r['cpu_utilisation']:.1%} |" if "cpu_utilisation" in r else "n/a |")
                if "utilisation" in r  # rows saved before the FLOP count, and the reference code's rows
                else "n/a | n/a | n/a | n/a | n/a |"
            )
        )
    lines += ["", note] + [f"- {name}: skipped ({why})" for name, why in skipped.items()]
    recounted = sorted({r["engine"] for r in rows if r.get("flops_from") == "l2l"})
    if recounted:
        lines.append(
            f"- {', '.join(recounted)} rows: GFLOP/iteration and utilisation use the l2l row's count (the "
            "work this meta-gradient needs); what FlopCounterMode counted over their own step is `gflop_counted` "
            "in speed.json (vmap's convolution backward and checkpointing's recomputation do more)."
        )
    return "\n".join(lines + side_by_side_sections(RESULTS)) + "\n"


def side_by_side_sections(results: Path) -> list[str]:
    """The landed speed changes as their own side-by-side benchmarks measured them (each comparison
    interleaved in one run, CPU time): ``before_after.jsonl`` (this code against an older checkout,
    ``bench/before_after.py``) and ``kernels.jsonl`` (one change at a time, ``bench/kernels.py``; the
    commands and loads are in kernels.md). Rows are quoted, not re-measured."""
    lines = []
    path = results / "before_after.jsonl"
    if path.is_file():
        lines += [
            "",
            "## Before and after, measured side by side (bench/before_after.py, CPU s per meta-iteration)",
            "",
            "| setting | threads | baseline commit | baseline | this code | speed-up | peak RSS GB baseline / this |",
            "|---|---:|---|---:|---:|---:|---|",
        ]
        for r in map(json.loads, path.read_text().splitlines()):
            cpu, rss = r["cpu_s_per_iteration"], r["peak_rss_gb"]
            lines.append(
                f"| {r['setting']} | {r['threads']} | {r['baseline_commit']} | {cpu['baseline']:.2f} | "
                f"{cpu['this']:.2f} | {r['speedup']:.2f}x | {rss['baseline']:.2f} / {rss['this']:.2f} |"
            )
    path = results / "kernels.jsonl"
    if path.is_file():
        lines += [
            "",
            "## Each change alone, measured side by side (bench/kernels.py; commands and loads in kernels.md)",
            "",
            "| comparison | setting | overrides (meta-batch) | repeats x iterations | ratio | wall clock | CPU time |",
            "|---|---|---|---|---|---:|---:|",
        ]
        for r in map(json.loads, path.read_text().splitlines()):
            for key, cpu in r.items():
                if "_over_" in key and key.endswith("_cpu"):
                    ratio = key.removesuffix("_cpu")
                    overrides = " ".join(r.get("overrides") or []) + (f" (T={r['tasks']})" if "tasks" in r else "")
                    blocks = f"{r['repeats']} x {r['iterations_per_repeat']}" if "repeats" in r else ""
                    lines.append(
                        f"| {r['comparison']} | {r.get('setting', '')} | {overrides} | {blocks} | "
                        f"{ratio} | {r.get(ratio, 'n/a')} | {cpu} |"
                    )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), help="default: all (--quick: a subset)")
    parser.add_argument("--engine", choices=[*ENGINES, "both"], default="both")
    parser.add_argument(
        "--first-order-row",
        action="store_true",
        help="also time the l2l engine first order (machinery overhead without second-order terms)",
    )
    parser.add_argument(
        "--checkpoint-steps-row",
        action="store_true",
        help="also time the l2l engine with algo.checkpoint_steps=true (activations recomputed: memory vs time)",
    )
    parser.add_argument("--quick", action="store_true", help=f"{', '.join(QUICK_SETTINGS)}; 2 timed iterations")
    parser.add_argument("--iterations", type=int, default=None, help="timed meta-iterations after one warm-up")
    parser.add_argument("--val-batches", type=int, default=None, help="timed validation batches after one warm-up")
    parser.add_argument("--val-batch-size", type=int, default=2, help="episodes per validation batch")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: OMP_NUM_THREADS, else all cores)"
    )
    parser.add_argument("--gpu", action="store_true", help="train on cuda (timers synchronise the device)")
    parser.add_argument("--precision", default=None, help="trainer.precision, e.g. bf16-mixed")
    parser.add_argument(
        "--reference-code",
        type=Path,
        default=os.environ.get("METAPLUS_MAMLPP_REFERENCE"),
        help="directory of the MAML++ reference code: adds its rows (bench/reference_mamlpp.py)",
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="keep the saved rows of the settings not measured now (their note is kept too)",
    )
    parser.add_argument("--note", default="", help="a line for speed.md (e.g. the machine's load)")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: rewrite <name>.md from <name>.json and the side-by-side files (kernels.jsonl, ...)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="results file stem under bench/results (default speed, with --gpu speed_gpu): a trial run's own name",
    )
    parser.add_argument("--child", choices=["train", "floor", "meta_floor"], help=argparse.SUPPRESS)
    parser.add_argument("--setting", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.iterations is None:
        args.iterations = 2 if args.quick else 4
    if args.val_batches is None:
        args.val_batches = 1 if args.quick else 3
    if args.render_only:
        name = args.name or ("speed" if not args.gpu else "speed_gpu")
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        (RESULTS / f"{name}.md").write_text(markdown(saved["rows"], saved.get("skipped", {}), saved["note"]))
        return print(f"rewrote bench/results/{name}.md")
    if args.child:
        return child(args)
    from metaplus.threads import available_cores, decide_threads

    if args.reference_code is not None and not (Path(args.reference_code) / "few_shot_learning_system.py").is_file():
        raise SystemExit(
            f"--reference-code / METAPLUS_MAMLPP_REFERENCE: no few_shot_learning_system.py in "
            f"{args.reference_code}; get the MAML++ reference code with "
            "`git clone https://github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch`"
        )
    args.threads, why = decide_threads(args.threads, os.environ, available_cores(), 1)
    engines = ["l2l", "batched"] if args.engine == "both" else [args.engine]
    engines += ["l2l_first_order"] if args.first_order_row and "l2l_first_order" not in engines else []
    engines += ["l2l_checkpoint_steps"] if args.checkpoint_steps_row and "l2l_checkpoint_steps" not in engines else []
    settings = args.settings or (QUICK_SETTINGS if args.quick else list(SETTINGS))
    device = "cuda" if args.gpu else "cpu"
    argv = public_command(sys.argv[1:], args.reference_code)
    note = (
        f"Measured in one run by `python bench/speed.py {' '.join(argv)}` on {device}, "
        f"{args.threads} torch thread(s) ({why}). {args.note}"
    ).strip()
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = args.name or ("speed" if not args.gpu else "speed_gpu")
    rows, skipped, kept, earlier = [], {}, [], ""
    if args.merge and (RESULTS / f"{name}.json").is_file():
        # Re-measure some settings and keep the others' rows, each with the command that measured it.
        saved = json.loads((RESULTS / f"{name}.json").read_text())
        measured = set(engines) | ({"mamlpp_reference"} if args.reference_code else set())
        kept = [r for r in saved["rows"] if not (r["setting"] in settings and r["engine"] in measured)]
        skipped = {k: v for k, v in saved.get("skipped", {}).items() if k not in settings}
        earlier = saved["note"] + (
            f" Then the rows of {', '.join(settings)} x {', '.join(sorted(measured))} were measured again: "
        )
    note = earlier + note
    order = {setting: i for i, setting in enumerate(SETTINGS)}
    for setting in settings:
        reason = missing_reason(setting)
        if reason:
            skipped[setting] = reason
            print(f"{setting}: skipped ({reason})", flush=True)
        else:
            try:
                rows += measure_setting(setting, engines, args)
            except ChildFailed as failure:  # one setting's failure (e.g. out of memory) keeps the others
                skipped[setting] = str(failure)
                print(f"{setting}: skipped ({failure})", flush=True)
        # Saved after every setting: an interrupted run keeps the rows it measured (and says so).
        done = "" if setting == settings[-1] else f" Incomplete: interrupted after {setting}."
        table = sorted(kept + rows, key=lambda r: order[r["setting"]])  # stable: engines keep their order
        (RESULTS / f"{name}.json").write_text(
            json.dumps({"note": note + done, "skipped": skipped, "rows": table}, indent=2) + "\n"
        )
        (RESULTS / f"{name}.md").write_text(markdown(table, skipped, note + done))
    print(f"saved bench/results/{name}.json and {name}.md")


if __name__ == "__main__":
    main()
