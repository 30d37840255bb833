"""Any folder-per-class image set as few-shot episodes (``data=imagefolder``).

Two ways to split classes into train/val/test (``data.split``):
- ``folders``: ``root/{train,val,test}/<class>/<image>``, the split given by the folders;
- ``ratios``: ``root/<class>/<image>``; the sorted class names are shuffled with ``split_seed`` and
  cut by ``ratios`` (train, val, test fractions), so the split is the same on every machine;
- ``auto`` (default): ``folders`` when ``root/train`` exists, else ``ratios``.
Images are converted to ``channels`` (1: grey, 3: RGB), resized to ``image_size`` squares, decoded
once into a uint8 cache, and normalised with ``mean``/``std`` per channel.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from metaplus.config import check, check_choice, check_int
from metaplus.data.images import (CorruptDatasetError, DatasetNotFoundError, ImageEpisodes, folder_classes,
                                  load_image_files, seeded_permutation)

SPLITS = ("train", "val", "test")


class ImageFolderTasks(ImageEpisodes):
    def __init__(
        self,
        ways: int,
        shots: int,
        queries: int,
        root: str,
        class_split: str = "auto",
        ratios: Sequence[float] = (0.64, 0.16, 0.20),
        split_seed: int = 0,
        image_size: int = 84,
        channels: int = 3,
        mean: Sequence[float] = (0.5,),
        std: Sequence[float] = (0.5,),
        cache_dir: str | None = None,
        max_classes: int | None = None,
        max_images_per_class: int | None = None,
        split: str = "train",
    ):
        check_choice("split", split, set(SPLITS))
        check_choice("source.class_split", class_split, {"auto", "folders", "ratios"})
        check_choice("source.channels", channels, {1, 3})
        check_int("source.image_size", image_size, 1)
        check("source.ratios", ratios, len(ratios) == 3 and all(r > 0 for r in ratios) and abs(sum(ratios) - 1) < 1e-6,
              "three positive fractions (train, val, test) summing to 1")
        check("source.root", root, root is not None, "the image folder (data.root)")
        root_path = Path(root).expanduser()
        if not root_path.is_dir():
            raise DatasetNotFoundError(f"image folder not found: looked for {root_path}, expected <class>/<image> "
                                       f"or {{train,val,test}}/<class>/<image> inside it; set data.root")
        if class_split == "auto":
            class_split = "folders" if (root_path / "train").is_dir() else "ratios"
        if class_split == "folders":
            classes = split_folder(root_path, split, max_classes, max_images_per_class)
        else:
            classes = ratio_split(root_path, split, ratios, split_seed, max_classes, max_images_per_class)
        data = load_image_files("imagefolder", split, classes, root_path, "RGB" if channels == 3 else "L", image_size,
                                cache_dir, class_split=class_split, ratios=list(ratios), split_seed=split_seed,
                                max_classes=max_classes, max_images_per_class=max_images_per_class)
        super().__init__(data, ways, shots, queries, mean=mean, std=std, split=split)


def split_folder(root: Path, split: str, max_classes, max_images) -> list:
    folder = root / split
    if not folder.is_dir():
        raise DatasetNotFoundError(f"split '{split}' not found: looked for {folder}/<class>/<image> (data.split=folders); "
                                   f"use data.split=ratios to split the classes of {root} by ratio instead")
    classes = folder_classes(folder, max_classes, max_images)
    if not classes:
        raise CorruptDatasetError(f"{folder} holds no <class>/<image> files")
    return classes


def ratio_split(root: Path, split: str, ratios: Sequence[float], seed: int, max_classes, max_images) -> list:
    classes = folder_classes(root, max_classes, max_images)
    n = len(classes)
    n_train, n_val = round(ratios[0] * n), round(ratios[1] * n)
    sizes = (n_train, n_val, n - n_train - n_val)
    if min(sizes) < 1:
        raise CorruptDatasetError(f"{root} has {n} class folders with images: too few to split by ratios {list(ratios)} "
                                  f"into train/val/test (sizes {sizes})")
    order = seeded_permutation(n, seed)
    start = sum(sizes[: SPLITS.index(split)])
    chosen = sorted(order[start : start + sizes[SPLITS.index(split)]])
    return [classes[i] for i in chosen]
