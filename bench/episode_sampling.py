"""Episode sampling throughput of the image sources (episodes/s, single process, from memory).

    OMP_NUM_THREADS=1 .venv/bin/python bench/episode_sampling.py [--data DIR] [--cache DIR] [--seconds 3]

Measures ``source.sample`` alone and whole meta-batches through the datamodule's collate for
Omniglot 5-way 1-shot and 20-way 1-shot (Vinyals train split) and mini-ImageNet 5-way 5-shot
(train split if present, else val), and for CIFAR-FS, FC100, tieredImageNet and CUB (train splits).
The last four are read from ``--data`` when there, else from synthetic copies written in each
release's exact format by metaplus/testing/zoo.py (all classes of the train split; CIFAR-100 with its
600 images per class, tieredImageNet (Ren et al.'s pickled PNG layout) and CUB with ``--synthetic-images``
per class, fewer than the real ~1,300 and ~60: sampling cost depends on ways, shots, queries and the
image size, not on the images per class). Queries are per class. Decoding/cache loading is timed
separately. Prints a table and writes bench/results/episode_sampling.{json,csv}.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

from metaplus.data.cifar import CifarTasks
from metaplus.data.class_splits import read_split
from metaplus.data.cub import CUBTasks
from metaplus.data.episodes import collate_tasks, episode_generator
from metaplus.data.miniimagenet import MiniImageNetTasks
from metaplus.data.omniglot import OmniglotTasks
from metaplus.data.tieredimagenet import TieredImageNetTasks

REPO = Path(__file__).resolve().parents[1]
SETTINGS = [  # name, dataset, ways, shots, queries per class, meta-batch (MAML's)
    ("omniglot 5w1s", "omniglot", 5, 1, 5, 32),
    ("omniglot 20w1s", "omniglot", 20, 1, 5, 16),
    ("miniimagenet 5w5s", "miniimagenet", 5, 5, 15, 2),
    ("cifarfs 5w1s", "cifarfs", 5, 1, 15, 4),
    ("fc100 5w5s", "fc100", 5, 5, 15, 2),
    ("tieredimagenet 5w1s", "tieredimagenet", 5, 1, 15, 4),
    ("cub 5w1s", "cub", 5, 1, 15, 4),
]


def rate(fn, seconds: float) -> tuple[float, int]:
    """Calls per second of ``fn`` over about ``seconds`` (after one warm-up call)."""
    fn(0)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(calls)
        calls += 1
    return calls / (time.perf_counter() - start), calls


def synthetic_root(dataset: str, data: Path, scratch: Path, images: int) -> tuple[Path, str]:
    """The real copy under ``data`` if there, else a synthetic one in the release's format."""
    from metaplus.testing import zoo  # the release-format generators shared with the tests

    folder = "cifar100" if dataset in ("cifarfs", "fc100") else dataset
    marker = {"cifar100": "cifar-100-python/train", "tieredimagenet": "train", "cub": "CUB_200_2011/images"}[folder]
    if (data / folder / marker).exists() or (
        dataset == "tieredimagenet" and (data / folder / "train_labels.pkl").exists()
    ):
        return data / folder, "real"
    root = scratch / ("cifar100" if dataset in ("cifarfs", "fc100") else dataset)
    if root.exists():
        return root, "synthetic"
    if dataset in ("cifarfs", "fc100"):
        zoo.make_cifar100(root, train_per_class=500, test_per_class=100)
    elif dataset == "tieredimagenet":
        zoo.make_tiered_pickled(root, "train", classes=len(read_split("tieredimagenet", "train")), images=images)
    else:
        zoo.make_cub(root, {"train": 100}, images=images, size=84)
    return root, "synthetic"


def build(dataset: str, ways: int, shots: int, queries: int, data: Path, cache: Path, scratch: Path, images: int):
    if dataset in ("cifarfs", "fc100", "tieredimagenet", "cub"):
        root, kind = synthetic_root(dataset, data, scratch, images)
        # A synthetic copy lives in a fresh temporary folder: no disk cache, its load time includes decoding.
        args = dict(root=str(root), cache_dir=str(cache) if kind == "real" else None, split="train")
        if dataset in ("cifarfs", "fc100"):
            return CifarTasks(ways, shots, queries, class_split=dataset, **args), f"train ({kind})"
        task_class = TieredImageNetTasks if dataset == "tieredimagenet" else CUBTasks
        return task_class(ways, shots, queries, **args), f"train ({kind})"
    if dataset == "omniglot":
        return OmniglotTasks(
            ways, shots, queries, root=str(data / "omniglot"), cache_dir=str(cache), split="train"
        ), "train"
    root = data / "miniimagenet"
    split = "train" if (root / "train").is_dir() else "val"
    return MiniImageNetTasks(ways, shots, queries, root=str(root), cache_dir=str(cache), split=split), split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("METAPLUS_DATA", REPO.parent / "shared" / "data"))
    )
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("METAPLUS_CACHE", REPO / ".cache")))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--only", nargs="+", default=None, help="datasets to measure (default: all)")
    parser.add_argument("--synthetic-images", type=int, default=20, help="images per class of synthetic tiered/CUB")
    args = parser.parse_args()

    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="metaplus-sampling-"))
    for name, dataset, ways, shots, queries, meta_batch in SETTINGS:
        if args.only and dataset not in args.only:
            continue
        if dataset in ("cifarfs", "fc100", "tieredimagenet", "cub"):
            synthetic_root(dataset, args.data, scratch, args.synthetic_images)  # writing it is not loading it
        start = time.perf_counter()
        source, split = build(dataset, ways, shots, queries, args.data, args.cache, scratch, args.synthetic_images)
        load_s = time.perf_counter() - start
        episodes, _ = rate(lambda i, source=source: source.sample(episode_generator("bench", i)), args.seconds)
        batches, _ = rate(
            lambda i, source=source, meta_batch=meta_batch: collate_tasks(
                [(j, source.sample(episode_generator("bench", i, j))) for j in range(meta_batch)]
            ),
            args.seconds,
        )
        rows.append(
            dict(
                setting=name,
                split=split,
                classes=source.num_classes,
                ways=ways,
                shots=shots,
                queries_per_class=queries,
                load_s=round(load_s, 2),
                episodes_per_s=round(episodes, 1),
                meta_batch=meta_batch,
                meta_batches_per_s=round(batches, 1),
            )
        )
        print(
            f"{name:20s} split={split:5s} classes={source.num_classes:5d} load {load_s:6.2f}s  "
            f"{episodes:8.1f} episodes/s  {batches:7.1f} meta-batches/s of {meta_batch}",
            flush=True,
        )

    shutil.rmtree(scratch, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "episode_sampling.json"
    if args.only and previous.is_file():  # a partial run updates its rows and keeps the others
        measured = {r["setting"] for r in rows}
        kept = [r for r in json.loads(previous.read_text())["results"] if r["setting"] not in measured]
        rows = [*kept, *rows]
    meta = dict(
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu=platform.processor() or platform.machine(),
        cpus=os.cpu_count(),
        seconds_per_measurement=args.seconds,
    )
    (args.out / "episode_sampling.json").write_text(json.dumps(dict(environment=meta, results=rows), indent=2) + "\n")
    with open(args.out / "episode_sampling.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[-1]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {args.out / 'episode_sampling.json'} and .csv")


if __name__ == "__main__":
    main()
