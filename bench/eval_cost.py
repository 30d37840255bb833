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
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from omegaconf import OmegaConf  # noqa: E402

from metaplus.compose import compose_config  # noqa: E402
from metaplus.config import instantiate_group  # noqa: E402
from metaplus.data.episodes import Task  # noqa: E402
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
    parser.add_argument("--presets", nargs="*", default=list(PRESETS), choices=list(PRESETS))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)
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
