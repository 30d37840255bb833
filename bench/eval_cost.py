"""Benchmark: validation time as a fraction of training time, for each paper preset.

    OMP_NUM_THREADS=1 python bench/eval_cost.py            # writes bench/results/eval_cost.{json,md}
    OMP_NUM_THREADS=1 python bench/eval_cost.py --iterations 2 --episodes 3   # what the saved results used

For each preset (the experiment config's algorithm, backbone, ways/shots/queries, meta-batch and
inner steps, composed by Hydra) it times, on one thread:
- s_per_iteration: one meta-iteration (every task's outer loss back-propagated, optimizer step),
- s_per_val_episode: one validation episode as Lightning runs it (model.eval(), no_grad outside the
  inner loop), with the per-step adaptation curve (``curve``: query scored after every inner step,
  what validation did before ``algo.eval_curve``) and without it (``final``: step 0 and last step,
  the default for validation now),
and reports val_fraction = val_episodes * s_per_val_episode / (batches_per_epoch * s_per_iteration).
Episodes are random tensors of the preset's shapes: the time depends on shapes, not pixels, and the
image caches need not be built. One warm-up iteration/episode is not timed.

    OMP_NUM_THREADS=1 python bench/eval_cost.py --ensemble 5 --episodes 20   # appends to eval_cost.md

``--ensemble K`` times the test instead (issue 26), for the MAML++ mini-ImageNet 5w1s preset (or
``--presets``): per episode, in one process and interleaved (the order alternates every episode),
the top-K checkpoint ensemble adapted one member after another (``sequential``, the former path) and
all members in one vmapped call (``batched``), and the best checkpoint's test episode with and
without the per-step curve. The K members are copies of the learner with perturbed weights: the cost
depends on shapes, not on how well the checkpoints trained. It extrapolates to the preset's full
test (``data.test_episodes``, the curve on the first ``algo.eval_curve_episodes``), appends a
section to eval_cost.md (the table above it is kept) and writes eval_cost_ensemble.json.

    OMP_NUM_THREADS=1 python bench/eval_cost.py --ensemble 5 --episodes 20 --run RUN_DIR

times the real test of a trained run instead (``train=false ckpt_path=RUN_DIR/checkpoints``, the
ensemble of its top-5 scored checkpoints, N real test episodes): seconds per episode of the best
checkpoint's ``trainer.test`` and of the ensemble (its default path on this device).

    python bench/eval_cost.py --scaling 3 --episodes 8   # all cores: op threads vs worker threads

``--scaling R`` times test episodes on every core of the machine three ways (one op thread; all cores
as op threads of one episode; one worker thread per core, as evaluation runs them on the CPU), R
interleaved rounds, and appends a section to eval_cost.md (eval_cost_scaling.json).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from datetime import date
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from metaplus.compose import compose_config  # noqa: E402
from metaplus.config import instantiate_group  # noqa: E402
from metaplus.data.episodes import Task  # noqa: E402
from metaplus.ensemble import MemberAdaptation, batched_predictions, stacked_state  # noqa: E402
from metaplus.nn.init_from import build_backbone  # noqa: E402

PRESETS = {
    "maml_omniglot_5w1s": "omniglot_5w1s",
    "maml_miniimagenet_5w1s": "miniimagenet_5w1s",
    "mamlpp_omniglot_5w1s": "mamlpp_omniglot_5w1s",
    "mamlpp_miniimagenet_5w1s": "mamlpp_miniimagenet_5w1s",
}
TARGET = 0.10


def compose_preset(experiment: str):
    return compose_config([f"experiment={experiment}", "logger=none", "data.root=unused"])


def random_task(cfg, generator: torch.Generator) -> Task:
    ways, shots, queries = cfg.data.ways, cfg.data.shots, cfg.data.queries
    shape = tuple(OmegaConf.to_container(cfg.data.input_shape, resolve=True))
    support_y = torch.arange(ways).repeat_interleave(shots)
    query_y = torch.arange(ways).repeat_interleave(queries)
    return Task(
        torch.randn(len(support_y), *shape, generator=generator),
        support_y,
        torch.randn(len(query_y), *shape, generator=generator),
        query_y,
    )


def time_iterations(learner, cfg, iterations: int, generator) -> float:
    learner.train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=learner.meta_lr)
    n = cfg.data.meta_batch_size
    times = []
    for i in range(iterations + 1):
        tasks = [random_task(cfg, generator) for _ in range(n)]
        start = time.perf_counter()
        optimizer.zero_grad()
        for task in tasks:
            loss, _ = learner.task_loss(task)
            (loss / n).backward()
        optimizer.step()
        if i:  # the first iteration is a warm-up
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def time_val_episodes(learner, cfg, episodes: int, per_step: bool, generator) -> float:
    learner.eval()
    times = []
    for i in range(episodes + 1):
        task = random_task(cfg, generator)
        start = time.perf_counter()
        with torch.no_grad():
            learner.evaluate_task(task, learner.test_inner_steps, per_step=per_step)
        if i:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def measure(name: str, experiment: str, iterations: int, episodes: int) -> dict:
    cfg = compose_preset(experiment)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    backbone = build_backbone(cfg.model)
    learner = instantiate_group(cfg.algo, "algo", backbone=backbone, task_type=cfg.data.task)
    s_iter = time_iterations(learner, cfg, iterations, generator)
    curve = time_val_episodes(learner, cfg, episodes, True, generator)
    final = time_val_episodes(learner, cfg, episodes, False, generator)
    train_s = cfg.data.batches_per_epoch * s_iter
    row = {
        "preset": name,
        "experiment": experiment,
        "algo": cfg.algo.name,
        "filters": cfg.model.filters,
        "ways": cfg.data.ways,
        "shots": cfg.data.shots,
        "queries": cfg.data.queries,
        "meta_batch_size": cfg.data.meta_batch_size,
        "inner_steps": cfg.algo.inner_steps,
        "test_inner_steps": cfg.algo.test_inner_steps,
        "batches_per_epoch": cfg.data.batches_per_epoch,
        "val_episodes": cfg.data.val_episodes,
        "s_per_iteration": round(s_iter, 4),
        "s_per_val_episode_curve": round(curve, 4),
        "s_per_val_episode_final": round(final, 4),
        "val_fraction_curve": round(cfg.data.val_episodes * curve / train_s, 4),
        "val_fraction_final": round(cfg.data.val_episodes * final / train_s, 4),
    }
    row["meets_target"] = row["val_fraction_final"] <= TARGET
    print(json.dumps(row), flush=True)
    return row


def perturbed_members(learner, k: int, generator: torch.Generator) -> list:
    """k evaluation-mode copies of ``learner`` with every parameter perturbed (as distinct checkpoints)."""
    members = []
    for _ in range(k):
        member = copy.deepcopy(learner).eval()
        with torch.no_grad():
            for p in member.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
        members.append(member)
    return members


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure_test(name: str, experiment: str, k: int, episodes: int) -> dict:
    """Seconds per test episode: the best checkpoint (curve / final only) and the top-k ensemble,
    sequential and batched, interleaved; extrapolated to the preset's full test."""
    cfg = compose_preset(experiment)
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    learner = instantiate_group(cfg.algo, "algo", backbone=build_backbone(cfg.model), task_type=cfg.data.task)
    learner.eval()
    steps = learner.test_inner_steps
    members = perturbed_members(learner, k, generator)
    adaptation, state = MemberAdaptation(members[0], steps), stacked_state(members)

    def best(task, per_step):
        with torch.no_grad():
            learner.evaluate_task(task, steps, per_step=per_step)

    runs = {
        "sequential": lambda task: [m.adapted_prediction(task, steps) for m in members],
        "batched": lambda task: batched_predictions(adaptation, state, task),
        "best_curve": lambda task: best(task, True),
        "best_final": lambda task: best(task, False),
    }
    times: dict[str, list[float]] = {key: [] for key in runs}
    for i in range(episodes + 1):  # episode 0 is a warm-up
        task = random_task(cfg, generator)
        order = list(runs) if i % 2 else list(reversed(runs))
        for key in order:
            seconds = timed(lambda key=key, task=task: runs[key](task))
            if i:
                times[key].append(seconds)
        if i:
            print(f"episode {i}: " + ", ".join(f"{key} {times[key][-1]:.2f} s" for key in runs), flush=True)
    mean = {key: sum(v) / len(v) for key, v in times.items()}
    # The ratio per episode: both paths saw the same moment's load (the means mix loads over minutes).
    ratios = sorted(b / s for s, b in zip(times["sequential"], times["batched"]))
    total, curved = cfg.data.test_episodes, cfg.algo.get("eval_curve_episodes") or cfg.data.test_episodes
    curved = min(curved, total) if cfg.algo.get("eval_curve", "test") in ("test", "all") else 0
    best_min = (curved * mean["best_curve"] + (total - curved) * mean["best_final"]) / 60
    row = {
        "preset": name,
        "experiment": experiment,
        "ensemble_top_k": k,
        "episodes_timed": episodes,
        "test_episodes": total,
        "curve_episodes": curved,
        "s_per_episode": {key: round(v, 3) for key, v in mean.items()},
        "batched_over_sequential_per_episode": {
            "median": round(ratios[len(ratios) // 2], 2),
            "min": round(ratios[0], 2),
            "max": round(ratios[-1], 2),
        },
        "full_test_min": {
            "best": round(best_min, 1),
            "best+sequential": round(best_min + total * mean["sequential"] / 60, 1),
            "best+batched": round(best_min + total * mean["batched"] / 60, 1),
        },
    }
    print(json.dumps(row), flush=True)
    return row


def measure_run(experiment: str, run_dir: Path, episodes: int, scratch: Path) -> dict:
    """The real test of a trained run, as ``python train.py experiment=... train=false
    ckpt_path=RUN/checkpoints data.test_episodes=N`` runs it (real episodes, data loading included):
    seconds of ``trainer.test`` (best checkpoint) and of ``evaluate_ensemble``, per episode."""
    import lightning as L

    import metaplus.run as run_module

    seconds: dict[str, float] = {}

    def timing(key: str, fn):
        def wrapped(*args, **kwargs):
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            seconds[key] = time.perf_counter() - start
            return out

        return wrapped

    ensemble, test = run_module.evaluate_ensemble, L.Trainer.test
    run_module.evaluate_ensemble = timing("ensemble", ensemble)
    L.Trainer.test = timing("best", test)
    try:
        overrides = [
            f"experiment={experiment}",
            "train=false",
            f"ckpt_path={run_dir / 'checkpoints'}",
            f"data.test_episodes={episodes}",
            "data.val_episodes=4",  # the validation pass before the test is not timed
            "logger=none",
        ]
        metrics = run_module.run(compose_config(overrides, scratch))
    finally:
        run_module.evaluate_ensemble, L.Trainer.test = ensemble, test
    row = {
        "experiment": experiment,
        "episodes": episodes,
        "ensemble_top_k": len(metrics["test/ensemble_checkpoints"]),
        "s_per_episode": {key: round(v / episodes, 3) for key, v in seconds.items()},
        "test/acc": metrics.get("test/acc"),
        "test/acc_ensemble": metrics.get("test/acc_ensemble"),
    }
    print(json.dumps(row), flush=True)
    return row


def measure_scaling(experiment: str, episodes: int, rounds: int) -> dict:
    """Wall seconds per test episode (``adapted_prediction``: 5 steps on the support set, the query
    pass) on the machine's cores three ways, interleaved over ``rounds``: one op thread; all cores as
    op threads of one episode at a time; one worker thread per core with one op thread each
    (:func:`metaplus.threads.map_on_workers`, what evaluation does on the CPU). The allocator is set
    as a run sets it (the preset's ``malloc_keep_buffers``)."""
    from metaplus.allocator import configure_allocator
    from metaplus.threads import available_cores, map_on_workers

    cfg = compose_preset(experiment)
    configure_allocator(cfg.get("malloc_keep_buffers", False))
    cores = available_cores()
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    learner = instantiate_group(cfg.algo, "algo", backbone=build_backbone(cfg.model), task_type=cfg.data.task)
    learner.eval()
    steps = learner.test_inner_steps
    tasks = [random_task(cfg, generator) for _ in range(episodes)]

    def one_at_a_time(threads: int) -> None:
        torch.set_num_threads(threads)
        for task in tasks:
            learner.adapted_prediction(task, steps)

    def on_workers() -> None:
        torch.set_num_threads(cores)
        map_on_workers(lambda _, task: learner.adapted_prediction(task, steps), enumerate(tasks), [None] * cores)

    variants = {"1 op thread": lambda: one_at_a_time(1), f"{cores} op threads": lambda: one_at_a_time(cores)}
    variants[f"{cores} workers x 1 op thread"] = on_workers
    for run in variants.values():  # warm-up: thread pools, the allocator's heap
        run()
    times: dict[str, list[float]] = {key: [] for key in variants}
    for i in range(rounds):
        for key in variants if i % 2 == 0 else reversed(list(variants)):
            times[key].append(timed(variants[key]) / episodes)
    torch.set_num_threads(1)
    median = {key: sorted(v)[len(v) // 2] for key, v in times.items()}
    single = median["1 op thread"]
    row = {
        "experiment": experiment,
        "cores": cores,
        "episodes": episodes,
        "rounds": rounds,
        "s_per_episode": {key: [round(t, 3) for t in v] for key, v in times.items()},
        "median_s_per_episode": {key: round(v, 3) for key, v in median.items()},
        "speedup_over_1_thread": {key: round(single / v, 2) for key, v in median.items()},
    }
    print(json.dumps(row), flush=True)
    return row


def scaling_markdown(row: dict, command: str, load: str, load_after: str) -> str:
    lines = [
        "",
        f"## Test episodes on {row['cores']} cores: op threads vs worker threads ({date.today()})",
        "",
        f"Wall seconds per test episode of {row['experiment']} (adapt on the support set, score the query "
        f"set), {row['episodes']} random episodes of the preset's shapes, {row['rounds']} interleaved rounds (median):",
        "",
        "| how | s per episode | speed-up over 1 thread |",
        "|---|---:|---:|",
    ]
    for key, seconds in row["median_s_per_episode"].items():
        lines.append(f"| {key} | {seconds:.3f} | {row['speedup_over_1_thread'][key]:.2f}x |")
    lines += ["", f"Measured by `{command}`; `uptime` before: {load}; after: {load_after}."]
    return "\n".join(lines) + "\n"


def ensemble_markdown(rows: list[dict], command: str, load: str, load_after: str) -> str:
    lines = [
        "",
        f"## Test cost of the top-k ensemble: members one after another vs one vmapped call ({date.today()})",
        "",
        "Seconds per test episode, 1 thread, interleaved in one process (random episodes of the preset's "
        "shapes, perturbed copies of the learner as members), and the full test extrapolated: best "
        "checkpoint (the per-step curve on the first `eval_curve_episodes`) + the ensemble.",
        "",
        "| preset | k | episodes timed | best, curve | best, final | ensemble sequential | ensemble batched "
        "| batched / sequential per episode (median, range) | full test: best + sequential | best + batched |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, full, ratio = r["s_per_episode"], r["full_test_min"], r["batched_over_sequential_per_episode"]
        lines.append(
            f"| {r['preset']} | {r['ensemble_top_k']} | {r['episodes_timed']} | {s['best_curve']:.2f} | "
            f"{s['best_final']:.2f} | {s['sequential']:.2f} | {s['batched']:.2f} | "
            f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f}) | "
            f"{full['best+sequential']:.0f} min | {full['best+batched']:.0f} min |"
        )
    lines += ["", f"Measured by `{command}`; `uptime` before: {load}; after: {load_after}."]
    return "\n".join(lines) + "\n"


def load_average() -> str:
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown(rows: list[dict], args) -> str:
    lines = [
        f"# Validation time / training time per epoch (1 thread, {args.iterations} iterations and "
        f"{args.episodes} episodes timed per preset, after one warm-up)",
        "",
        "before = query scored after every inner step (the former validation); after = step 0 and "
        "the last step only (`algo.eval_curve=test`, the default). Target <= 10 %.",
        "",
        "| preset | s/iteration | s/val episode before | after | val fraction before | after |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} ({r['val_episodes']} val episodes, {r['batches_per_epoch']} iterations) "
            f"| {r['s_per_iteration']:.3f} | {r['s_per_val_episode_curve']:.3f} | "
            f"{r['s_per_val_episode_final']:.3f} | {100 * r['val_fraction_curve']:.1f} % | "
            f"{100 * r['val_fraction_final']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iterations", type=int, default=2, help="timed meta-iterations per preset")
    parser.add_argument("--episodes", type=int, default=3, help="timed validation episodes per mode")
    parser.add_argument("--presets", nargs="*", default=None, choices=list(PRESETS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--ensemble",
        type=int,
        default=0,
        metavar="K",
        help="time the test with a top-K ensemble instead (default preset: mamlpp_miniimagenet_5w1s)",
    )
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="with --ensemble: time the real test of this trained run's checkpoints instead "
        "(train=false ckpt_path=RUN/checkpoints, --episodes test episodes); prints, writes nothing",
    )
    parser.add_argument(
        "--scaling",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="time --episodes test episodes on all cores: op threads vs worker threads, ROUNDS rounds "
        "(MAML++ mini-ImageNet 5w1s or --presets); appends to eval_cost.md",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.scaling:
        load = load_average()
        name = (args.presets or ["mamlpp_miniimagenet_5w1s"])[0]
        row = measure_scaling(PRESETS[name], args.episodes, args.scaling)
        load_after = load_average()
        args.out.mkdir(parents=True, exist_ok=True)
        payload = {"torch": torch.__version__, "load_before": load, "load_after": load_after, "row": row}
        (args.out / "eval_cost_scaling.json").write_text(json.dumps(payload, indent=2) + "\n")
        section = scaling_markdown(row, "python bench/eval_cost.py " + " ".join(sys.argv[1:]), load, load_after)
        with open(args.out / "eval_cost.md", "a") as md:
            md.write(section)
        print(section)
        return
    if args.run is not None:
        if not args.ensemble or not (args.run / "checkpoints").is_dir():
            parser.error(f"--run {args.run}: needs --ensemble and a run directory with checkpoints/")
        import tempfile

        name = (args.presets or ["mamlpp_miniimagenet_5w1s"])[0]
        with tempfile.TemporaryDirectory() as scratch:
            measure_run(PRESETS[name], args.run, args.episodes, Path(scratch) / "eval")
        return
    if args.ensemble:
        if args.ensemble < 1 or args.episodes < 1:
            parser.error(f"--ensemble {args.ensemble} --episodes {args.episodes}: both must be >= 1")
        load = load_average()
        presets = ["mamlpp_miniimagenet_5w1s"] if args.presets is None else args.presets
        rows = [measure_test(name, PRESETS[name], args.ensemble, args.episodes) for name in presets]
        args.out.mkdir(parents=True, exist_ok=True)
        load_after = load_average()
        payload = {
            "threads": 1,
            "torch": torch.__version__,
            "load_before": load,
            "load_after": load_after,
            "rows": rows,
        }
        (args.out / "eval_cost_ensemble.json").write_text(json.dumps(payload, indent=2) + "\n")
        command = "OMP_NUM_THREADS=1 python bench/eval_cost.py " + " ".join(sys.argv[1:])
        section = ensemble_markdown(rows, command, load, load_after)
        with open(args.out / "eval_cost.md", "a") as md:
            md.write(section)
        print(section)
        return
    args.presets = list(PRESETS) if args.presets is None else args.presets
    rows = [measure(name, PRESETS[name], args.iterations, args.episodes) for name in args.presets]
    args.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "threads": 1,
        "iterations": args.iterations,
        "episodes": args.episodes,
        "target": TARGET,
        "torch": torch.__version__,
        "rows": rows,
    }
    (args.out / "eval_cost.json").write_text(json.dumps(payload, indent=2) + "\n")
    (args.out / "eval_cost.md").write_text(markdown(rows, args))
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
