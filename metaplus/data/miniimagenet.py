"""mini-ImageNet (Vinyals et al. 2016) with Ravi & Larochelle's 64/16/20 class split, as episodes.

Two layouts are read from ``root``, per split:
- folder per class: ``root/<split>/<wnid>/*.jpg`` (the layout of ../shared/data/miniimagenet);
- Ravi & Larochelle's: every image in ``root/images/`` and ``root/<split>.csv`` (``filename,label``).

Each split is decoded once into a uint8 cache (84x84 RGB by default); episodes are normalised with
per-channel ``mean``/``std`` (ImageNet statistics by default). ``max_classes`` and
``max_images_per_class`` keep only the first classes/images (by name): for tests and quick trials.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from metaplus.data.cache import load_image_files
from metaplus.data.errors import CorruptDatasetError, DatasetNotFoundError
from metaplus.data.image_source import ImageSource
from metaplus.data.listing import folder_classes
from metaplus.data.preprocessing import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HOW_TO_GET = (
    "mini-ImageNet has no official download (ImageNet's terms of access apply): build it from "
    "ILSVRC-2012 with Ravi & Larochelle's split files (https://github.com/twitter/meta-learning-lstm, "
    "data/miniImagenet/{train,val,test}.csv) and point data.root at the folder"
)


def preprocessing(
    image_size: int = 84, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Preprocessing:
    """mini-ImageNet's input: RGB, resized to ``image_size`` (Lanczos), ``(x / 255 - mean) / std``.
    The sources decode and normalise with it; ``metaplus.load(...).preprocess`` is it."""
    return Preprocessing("RGB", image_size, mean=tuple(mean), std=tuple(std))


class MiniImageNetTasks(ImageSource):
    class_splits = ("ravi",)  # the CSVs / folders define the split
    root_holds = "the mini-ImageNet folder"

    def __init__(
        self,
        ways: int,
        shots: int,
        queries: int,
        root: str,
        class_split: str = "ravi",
        image_size: int = 84,
        cache_dir: str | None = None,
        download: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        max_classes: int | None = None,
        max_images_per_class: int | None = None,
        split: str = "train",
    ):
        root_path = self.checked_root(split, class_split, image_size, root, max_classes, max_images_per_class)
        classes = split_classes(root_path, split, download, max_classes, max_images_per_class)
        prep = preprocessing(image_size, mean, std)
        data = load_image_files(
            "miniimagenet",
            split,
            classes,
            root_path,
            prep.mode,
            prep.size,
            cache_dir,
            max_classes=max_classes,
            max_images_per_class=max_images_per_class,
        )
        super().__init__(data, prep, ways, shots, queries, split)


def split_classes(
    root: Path, split: str, download: bool, max_classes: int | None, max_images: int | None
) -> list[tuple[str, list[Path]]]:
    """[(wnid, [image files])] of ``split`` from whichever layout ``root`` has."""
    folder, images, table = root / split, root / "images", root / f"{split}.csv"
    if folder.is_dir():
        classes = folder_classes(folder, max_classes, max_images)
        if table.is_file() and max_classes is None:
            check_against_csv(folder, {name for name, _ in classes}, table)
    elif images.is_dir() and table.is_file():
        classes = csv_classes(table, images, max_classes, max_images)
    else:
        hint = " (data.download=true cannot help: " + HOW_TO_GET + ")" if download else f"; {HOW_TO_GET}"
        raise DatasetNotFoundError(
            f"mini-ImageNet split '{split}' not found: looked for {folder}/<wnid>/*.jpg and for {images}/ with "
            f"{table} (Ravi & Larochelle's layout){hint}."
        )
    if not classes:
        raise CorruptDatasetError(
            f"mini-ImageNet split '{split}' at {folder if folder.is_dir() else table} has no images"
        )
    return classes


def csv_classes(
    table: Path, images: Path, max_classes: int | None, max_images: int | None
) -> list[tuple[str, list[Path]]]:
    by_label: dict[str, list[Path]] = {}
    for row in read_csv(table):
        by_label.setdefault(row["label"], []).append(images / row["filename"])
    classes = [(label, sorted(files)[:max_images]) for label, files in sorted(by_label.items())][:max_classes]
    missing = [f for _, files in classes for f in files if not f.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"{table} lists {len(missing)} images missing from {images}/, e.g. {missing[0]}; {HOW_TO_GET}."
        )
    return classes


def check_against_csv(folder: Path, found: set[str], table: Path) -> None:
    """A split folder whose classes differ from its CSV is a misplaced or incomplete copy."""
    expected = {row["label"] for row in read_csv(table)}
    if found != expected:
        absent, extra = sorted(expected - found), sorted(found - expected)
        raise CorruptDatasetError(
            f"{folder} does not hold the classes {table} lists: "
            f"missing {absent[:3]}{'...' if len(absent) > 3 else ''} ({len(absent)}), "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''} ({len(extra)})"
        )


def read_csv(table: Path) -> list[dict[str, str]]:
    with open(table, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"filename", "label"} <= set(rows[0]):
        raise CorruptDatasetError(f"{table} must have the header 'filename,label'")
    return rows
