"""Episode sampling throughput of the image sources (episodes/s, single process, from memory).

    OMP_NUM_THREADS=1 .venv/bin/python bench/episode_sampling.py [--data DIR] [--cache DIR] [--seconds 3]

Measures ``source.sample`` alone and whole meta-batches through the datamodule's collate for
Omniglot 5-way 1-shot and 20-way 1-shot (Vinyals train split) and mini-ImageNet 5-way 5-shot
(train split if present, else val: the shared copy has no train split yet). Queries are per class.
Decoding/cache loading is timed separately. Prints a table and writes
bench/results/episode_sampling.{json,csv}.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

import torch

from metaplus.data.episodes import collate_tasks, episode_generator
from metaplus.data.miniimagenet import MiniImageNetTasks
from metaplus.data.omniglot import OmniglotTasks

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [  # name, dataset, ways, shots, queries per class, meta-batch (MAML's)
    ("omniglot 5w1s", "omniglot", 5, 1, 5, 32),
    ("omniglot 20w1s", "omniglot", 20, 1, 5, 16),
    ("miniimagenet 5w5s", "miniimagenet", 5, 5, 15, 2),
]


def rate(fn, seconds: float) -> tuple[float, int]:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn(0)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(calls)
        calls += 1
    return calls / (time.perf_counter() - start), calls


def build(dataset: str, ways: int, shots: int, queries: int, data: Path, cache: Path):
    if dataset == "omniglot":
        return OmniglotTasks(ways, shots, queries, root=str(data / "omniglot"), cache_dir=str(cache), split="train"), "train"
    root = data / "miniimagenet"
    split = "train" if (root / "train").is_dir() else "val"
    return MiniImageNetTasks(ways, shots, queries, root=str(root), cache_dir=str(cache), split=split), split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("METAPLUS_DATA", REPO.parent / "shared" / "data")))
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("METAPLUS_CACHE", REPO / ".cache")))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()

    rows = []
    for name, dataset, ways, shots, queries, meta_batch in SETTINGS:
        start = time.perf_counter()
        source, split = build(dataset, ways, shots, queries, args.data, args.cache)
        load_s = time.perf_counter() - start
        episodes, _ = rate(lambda i: source.sample(episode_generator("bench", i)), args.seconds)
        batches, _ = rate(lambda i: collate_tasks([(j, source.sample(episode_generator("bench", i, j)))
                                                   for j in range(meta_batch)]), args.seconds)
        rows.append(dict(setting=name, split=split, classes=source.num_classes, ways=ways, shots=shots,
                         queries_per_class=queries, load_s=round(load_s, 2), episodes_per_s=round(episodes, 1),
                         meta_batch=meta_batch, meta_batches_per_s=round(batches, 1)))
        print(f"{name:18s} split={split:5s} classes={source.num_classes:5d} load {load_s:6.2f}s  "
              f"{episodes:8.1f} episodes/s  {batches:7.1f} meta-batches/s of {meta_batch}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    meta = dict(torch=torch.__version__, threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), seconds_per_measurement=args.seconds)
    (args.out / "episode_sampling.json").write_text(json.dumps(dict(environment=meta, results=rows), indent=2) + "\n")
    with open(args.out / "episode_sampling.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out / 'episode_sampling.json'} and .csv")


if __name__ == "__main__":
    main()
