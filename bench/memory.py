"""Benchmark: peak memory and time per meta-iteration against the meta-batch size.

MAML++ (all six switches), Conv-4 (64 filters), Omniglot 5-way 1-shot, 15 queries per class,
5 second-order inner steps (derivative-order annealing off so every step is second order), meta-batch
4, 8, 16 and 32 on one process. Each setting runs in a fresh process through the real Lightning
Trainer; a callback times each meta-iteration (the first is a warm-up and is dropped) and the
child's peak RSS is read by the parent (``os.wait4``).

``--mode naive`` instead sums the meta-batch's losses and back-propagates once (every task's graph
held until the end), the pattern that makes memory grow with the meta-batch; it is here only for
comparison and is not part of the library.

    python bench/memory.py                          # 4 8 16 32, per-task backward (the library)
    python bench/memory.py --mode naive --batches 4 8 16
    python bench/memory.py --checkpoint-steps       # the same with algo.checkpoint_steps=true

``measure_run`` times any config the same way (bench/checkpoint_steps.py uses it for the presets).
Reference (measured on this machine kind): MAML++ reference code at meta-batch 16: 6.8 s/iteration,
10.6 GB; a plain learn2learn per-task loop: 3.0 s, 1.8 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "bench" / "results"

from metaplus.benchmarking.processes import run_measured  # noqa: E402 (after the path is set)


def setting(meta_batch: int, iterations: int, checkpoint_steps: bool = False) -> list[str]:
    """The overrides of this benchmark's setting (module docstring) at one meta-batch size."""
    return [
        "algo=mamlpp",
        "algo.da=false",
        "data=omniglot",
        "model=conv4",
        "model.activation=leaky_relu",
        "data.ways=5",
        "data.shots=1",
        "data.queries=15",
        f"data.meta_batch_size={meta_batch}",
        f"data.batches_per_epoch={iterations + 1}",
        f"algo.checkpoint_steps={str(checkpoint_steps).lower()}",
    ]


#: Every measured run: one epoch of training only, nothing logged, checkpointed, validated or tested.
TRAINING_ONLY = [
    "trainer.max_epochs=1",
    "+trainer.limit_val_batches=0",
    "logger=none",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "~callbacks.model_checkpoint",
    "+trainer.enable_checkpointing=false",
    "test=false",
]


def child(overrides: list[str], mode: str, out: Path) -> None:
    """Runs inside the measured process: trains the config ``overrides`` compose, timing each meta-iteration."""
    import lightning as L
    import torch

    from metaplus.compose import compose_config
    from metaplus.run import build
    from metaplus.threads import configure_run_threads

    cfg = compose_config([*overrides, *TRAINING_ONLY], out)
    configure_run_threads(cfg)  # threads and allocator as a run sets them (rows before 2026-12-08: torch's defaults)
    L.seed_everything(0)
    parts = build(cfg)
    learner, trainer = parts["learner"], parts["trainer"]
    if mode == "naive":
        hold_all_graphs(learner)
    times: list[float] = []
    cpu_times: list[float] = []  # CPU seconds of this process: what one uncontended core would take

    class Timer(L.Callback):
        def on_train_batch_start(self, *args):
            self.start, self.cpu_start = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, *args):
            times.append(time.perf_counter() - self.start)
            cpu_times.append(time.process_time() - self.cpu_start)

    trainer.callbacks.append(Timer())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    trainer.fit(learner, datamodule=parts["datamodule"])
    (out / "timing.json").write_text(
        json.dumps(
            {
                "times": times,
                "cpu_times": cpu_times,
                "rss_before_kb": rss_before,
                "threads": torch.get_num_threads(),
            }
        )
    )


def hold_all_graphs(learner) -> None:
    """Comparison only: one backward over the summed meta-batch loss (graphs of all tasks alive)."""
    import torch

    def training_step(batch, batch_idx):
        optimizer = learner.optimizers()
        optimizer.zero_grad()
        losses = [learner.task_loss(batch[b])[0] for b in range(len(batch))]
        loss = torch.stack(losses).mean()
        learner.manual_backward(loss)
        optimizer.step()
        return loss

    learner.training_step = training_step


def measure_run(overrides: list[str], mode: str = "per_task", label: str = "run", skip: int = 1) -> dict:
    """Train the config ``overrides`` compose (plus ``TRAINING_ONLY``) in a fresh measured process: its
    peak RSS and seconds per meta-iteration, the first ``skip`` iterations dropped as warm-up when there
    are more."""
    out = REPO / "outputs" / "bench" / f"memory-{label}-{time.strftime('%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    peak_rss_gb = run_measured(
        [sys.executable, __file__, "--child", json.dumps(overrides), "--mode", mode, "--out", str(out)],
        cwd=REPO,
    )
    timing = json.loads((out / "timing.json").read_text())
    steady = timing["times"][skip:] or timing["times"]
    steady_cpu = timing["cpu_times"][skip:] or timing["cpu_times"]
    return {
        "mode": mode,
        "iterations_timed": len(steady),
        "warm_up_dropped": len(timing["times"]) > skip,  # the first ``skip`` iterations
        "s_per_iteration": round(sum(steady) / len(steady), 3),
        "cpu_s_per_iteration": round(sum(steady_cpu) / len(steady_cpu), 3),
        "peak_rss_gb": peak_rss_gb,
        "rss_before_training_gb": round(timing["rss_before_kb"] / 1024**2, 3),
        "torch_threads": timing["threads"],
    }


def measure(meta_batch: int, iterations: int, mode: str, checkpoint_steps: bool = False) -> dict:
    label = f"{mode}-{meta_batch}" + ("-checkpoint_steps" if checkpoint_steps else "")
    row = measure_run(setting(meta_batch, iterations, checkpoint_steps), mode, label)
    return {
        "mode": mode,
        "checkpoint_steps": checkpoint_steps,
        "meta_batch": meta_batch,
        **row,
        "s_per_task": round(row["s_per_iteration"] / meta_batch, 3),
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    for mode in sorted({r["mode"] for r in rows}):
        sub = [r for r in rows if r["mode"] == mode]
        left.plot([r["meta_batch"] for r in sub], [r["peak_rss_gb"] for r in sub], marker="o", label=mode)
        right.plot([r["meta_batch"] for r in sub], [r["s_per_iteration"] for r in sub], marker="o", label=mode)
    left.set(xlabel="meta-batch", ylabel="peak RSS (GB)", xscale="log", title="memory")
    right.set(xlabel="meta-batch", ylabel="s / meta-iteration", xscale="log", title="time")
    for ax in (left, right):
        ax.set_xticks([4, 8, 16, 32], labels=["4", "8", "16", "32"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--iterations", type=int, default=3, help="timed meta-iterations (after one warm-up)")
    parser.add_argument("--mode", choices=["per_task", "naive"], default="per_task")
    parser.add_argument(
        "--checkpoint-steps",
        action="store_true",
        help="algo.checkpoint_steps=true: inner-loop activations recomputed in the meta-backward",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the measured process: its overrides as JSON
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(json.loads(args.child), args.mode, args.out)
    rows = []
    for meta_batch in args.batches:
        row = measure(meta_batch, args.iterations, args.mode, args.checkpoint_steps)
        rows.append(row)
        print(
            f"{row['mode']:8s} meta-batch {meta_batch:3d}: {row['s_per_iteration']:7.2f} s/iteration "
            f"({row['s_per_task']:.2f} s/task), peak RSS {row['peak_rss_gb']:.2f} GB "
            f"(before training {row['rss_before_training_gb']:.2f} GB)",
            flush=True,
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    name = f"memory_{args.mode}" + ("_checkpoint_steps" if args.checkpoint_steps else "")
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, RESULTS / f"{name}.png")
    print(f"saved {RESULTS / (name + '.json')} and {RESULTS / (name + '.png')}")


if __name__ == "__main__":
    main()
