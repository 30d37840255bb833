"""CUB-200-2011 (Wah et al. 2011) with the 100/50/50 class split of Chen et al. (2019).

Reads the official archive's layout, ``root/CUB_200_2011/images/<NNN.Class_name>/*.jpg`` (or
``root/images/...``): CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/,
extracted. The split (``splits/cub/*.txt``, from "A Closer Look at Few-shot Classification"):
the 200 class folders sorted by name, train = every even index, val = index % 4 == 1, test =
index % 4 == 3. Images are resized to ``image_size`` squares (84 by default, ignoring the aspect
ratio, as the usual few-shot pipelines' final resize; Lanczos), decoded once into a uint8 cache, and
normalised with ImageNet's per-channel mean/std (:func:`preprocessing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from metaplus.data.cache import load_image_files
from metaplus.data.class_splits import read_split, split_folder_classes
from metaplus.data.errors import DatasetNotFoundError
from metaplus.data.image_source import ImageSource
from metaplus.data.miniimagenet import IMAGENET_MEAN, IMAGENET_STD
from metaplus.data.miniimagenet import preprocessing as imagenet_preprocessing
from metaplus.data.preprocessing import Preprocessing

HOW_TO_GET = (
    "download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ "
    "(CaltechDATA), extract it under data.root"
)


def preprocessing(
    image_size: int = 84, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Preprocessing:
    """CUB's input, as mini-ImageNet's: RGB, resized to ``image_size`` squares (Lanczos),
    ``(x / 255 - mean) / std``. The sources decode and normalise with it; ``metaplus.load(...).preprocess``
    is it."""
    return imagenet_preprocessing(image_size, mean, std)


class CUBTasks(ImageSource):
    class_splits = ("chen",)
    root_holds = "the folder holding CUB_200_2011/"

    def __init__(
        self,
        ways: int,
        shots: int,
        queries: int,
        root: str,
        class_split: str = "chen",
        image_size: int = 84,
        cache_dir: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        max_classes: int | None = None,
        max_images_per_class: int | None = None,
        split: str = "train",
    ):
        root_path = self.checked_root(split, class_split, image_size, root, max_classes, max_images_per_class)
        every = set().union(*(read_split("cub", s) for s in ("train", "val", "test")))
        classes = split_folder_classes(
            "cub", split, images_folder(root_path), every, "CUB-200-2011 classes", max_classes, max_images_per_class
        )
        prep = preprocessing(image_size, mean, std)
        data = load_image_files(
            "cub",
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


def images_folder(root: Path) -> Path:
    for folder in (root / "CUB_200_2011" / "images", root / "images"):
        if folder.is_dir():
            return folder
    raise DatasetNotFoundError(
        f"CUB-200-2011 not found: looked for {root / 'CUB_200_2011' / 'images'}/<NNN.Class_name>/*.jpg (and for "
        f"{root / 'images'}/), the layout of the official archive; {HOW_TO_GET}, or point data.root at its folder."
    )
