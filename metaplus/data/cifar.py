"""CIFAR-FS and FC100: few-shot episodes from the official CIFAR-100 python release.

Both read ``cifar-100-python/{train,test,meta}`` (https://www.cs.toronto.edu/~kriz/cifar.html, the
"CIFAR-100 python version" archive ``cifar-100-python.tar.gz``, extracted) under ``root`` (or those
three files directly in ``root``). Train and test pickles are pooled: the few-shot splits are by
class, so each class has all its 600 images. The pickles are read with a restricted unpickler
(:mod:`metaplus.data.safe_pickle`): only numpy arrays and plain data are accepted.

Class splits (``data.split``):
- ``cifarfs`` (Bertinetto et al. 2019): 64/16/20 fine classes, ``splits/cifarfs/*.txt``;
- ``fc100`` (Oreshkin et al. 2018): 12/4/4 superclasses (60/20/20 fine classes), ``splits/fc100/*.txt``
  lists superclasses; a split holds every fine class whose images carry one of its coarse labels.
Images stay 32x32 (``image_size`` other than 32 resizes them, bilinear with antialiasing) and are
normalised with CIFAR-100's per-channel mean/std (:func:`preprocessing`). Each split is cached as
uint8 under ``cache_dir``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from metaplus.data.cache import cache_key, cache_prefix, cached_class_images, file_identity
from metaplus.data.class_images import ClassImages
from metaplus.data.class_splits import present_classes, read_split
from metaplus.data.errors import CorruptDatasetError, DatasetNotFoundError
from metaplus.data.image_source import ImageSource
from metaplus.data.preprocessing import Preprocessing, resize_bilinear
from metaplus.data.safe_pickle import load_pickle, text, text_keys

CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
SCHEMES = ("cifarfs", "fc100")
FILES = ("train", "test", "meta")
HOW_TO_GET = (
    "download the CIFAR-100 python version (cifar-100-python.tar.gz) from "
    "https://www.cs.toronto.edu/~kriz/cifar.html, extract it under data.root"
)


def preprocessing(
    image_size: int = 32, mean: Sequence[float] = CIFAR100_MEAN, std: Sequence[float] = CIFAR100_STD
) -> Preprocessing:
    """CIFAR-FS's and FC100's input: RGB, resized to ``image_size`` bilinear with antialiasing (the
    release's 32x32 arrays stay as they are at 32), ``(x / 255 - mean) / std``. The sources resize and
    normalise with it; ``metaplus.load(...).preprocess`` is it."""
    return Preprocessing("RGB", image_size, mean=tuple(mean), std=tuple(std), resample="bilinear")


class CifarTasks(ImageSource):
    class_splits = SCHEMES
    root_holds = "the folder holding cifar-100-python/"

    def __init__(
        self,
        ways: int,
        shots: int,
        queries: int,
        root: str,
        class_split: str = "cifarfs",
        image_size: int = 32,
        cache_dir: str | None = None,
        mean: Sequence[float] = CIFAR100_MEAN,
        std: Sequence[float] = CIFAR100_STD,
        max_classes: int | None = None,
        max_images_per_class: int | None = None,
        split: str = "train",
    ):
        folder = release_folder(
            self.checked_root(split, class_split, image_size, root, max_classes, max_images_per_class)
        )
        paths = [folder / name for name in FILES]
        key = cache_key(
            scheme=class_split,
            split=split,
            image_size=image_size,
            max_classes=max_classes,
            max_images=max_images_per_class,
            files=file_identity(paths, relative_to=folder),
        )
        prefix = cache_prefix(
            class_split, split, image_size, folder, max_classes=max_classes, max_images=max_images_per_class
        )
        prep = preprocessing(image_size, mean, std)
        data = cached_class_images(
            cache_dir,
            prefix,
            key,
            lambda: build_split(folder, class_split, split, prep, max_classes, max_images_per_class),
            shape=lambda: (
                split_size(folder, class_split, split, max_classes, max_images_per_class),
                3,
                prep.size,
                prep.size,
            ),
        )
        super().__init__(data, prep, ways, shots, queries, split)


def release_folder(root: Path) -> Path:
    """``root/cifar-100-python`` or ``root`` itself, whichever holds train, test and meta."""
    for folder in (root / "cifar-100-python", root):
        if all((folder / name).is_file() for name in FILES):
            return folder
    raise DatasetNotFoundError(
        f"CIFAR-100 not found: looked for {root / 'cifar-100-python'}/{{train,test,meta}} (and for those files in "
        f"{root}), the official python release; {HOW_TO_GET}, or point data.root at its folder."
    )


def read_release(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    """Pooled images (N, 3, 32, 32) uint8, fine and coarse labels, fine and coarse class names."""
    meta_path = folder / "meta"
    meta = text_keys(load_pickle(meta_path), meta_path)
    try:
        fine_names = [text(n) for n in meta["fine_label_names"]]
        coarse_names = [text(n) for n in meta["coarse_label_names"]]
    except KeyError as err:
        raise CorruptDatasetError(f"{meta_path} has no {err} entry: not the CIFAR-100 python release") from None
    images, fine, coarse = [], [], []
    for name in ("train", "test"):
        path = folder / name
        record = text_keys(load_pickle(path), path)
        missing = {"data", "fine_labels", "coarse_labels"} - set(record)
        if missing:
            raise CorruptDatasetError(
                f"{path} lacks {sorted(missing)}: not the CIFAR-100 python release "
                f"(CIFAR-10's files have 'labels' only)"
            )
        data = np.asarray(record["data"])
        labels = np.asarray(record["fine_labels"], dtype=np.int64)
        supers = np.asarray(record["coarse_labels"], dtype=np.int64)
        if (
            data.dtype != np.uint8
            or data.ndim != 2
            or data.shape[1] != 3072
            or not len(data) == len(labels) == len(supers)
        ):
            raise CorruptDatasetError(
                f"{path}: 'data' must be (N, 3072) uint8 with N fine and coarse labels, got "
                f"{data.dtype} {data.shape}, {len(labels)} and {len(supers)} labels"
            )
        if len(labels) and (labels.max() >= len(fine_names) or supers.max() >= len(coarse_names) or labels.min() < 0):
            raise CorruptDatasetError(f"{path} has labels beyond the {len(fine_names)} classes named in {meta_path}")
        images.append(data.reshape(-1, 3, 32, 32))  # each row: 1024 red, 1024 green, 1024 blue, row-major
        fine.append(labels)
        coarse.append(supers)
    return np.concatenate(images), np.concatenate(fine), np.concatenate(coarse), fine_names, coarse_names


def build_split(
    folder: Path, scheme: str, split: str, prep: Preprocessing, max_classes: int | None, max_images: int | None
) -> ClassImages:
    images, fine, coarse, fine_names, coarse_names = read_release(folder)
    classes, rows = split_rows(folder, scheme, split, fine, coarse, fine_names, coarse_names, max_classes, max_images)
    pixels = resize_bilinear(torch.from_numpy(images[np.concatenate(rows)]), prep.size)
    return ClassImages(pixels.contiguous(), torch.tensor([len(r) for r in rows], dtype=torch.long), classes)


def split_size(folder: Path, scheme: str, split: str, max_classes: int | None, max_images: int | None) -> int:
    """How many images the split will hold (read before the split is decoded, to say how big it is)."""
    _, fine, coarse, fine_names, coarse_names = read_release(folder)
    _, rows = split_rows(folder, scheme, split, fine, coarse, fine_names, coarse_names, max_classes, max_images)
    return sum(len(r) for r in rows)


def split_rows(
    folder: Path,
    scheme: str,
    split: str,
    fine: np.ndarray,
    coarse: np.ndarray,
    fine_names: list[str],
    coarse_names: list[str],
    max_classes: int | None,
    max_images: int | None,
) -> tuple[list[str], list]:
    """The split's fine classes and, per class, its rows in the pooled release."""
    present = {fine_names[c] for c in np.unique(fine)}
    if scheme == "cifarfs":
        wanted = read_split("cifarfs", split)
        unknown = sorted(set(wanted) - set(fine_names))
        if unknown:
            raise CorruptDatasetError(
                f"{folder / 'meta'} does not name the CIFAR-FS classes {unknown[:3]}: not the CIFAR-100 release"
            )
        classes = present_classes("cifarfs", split, sorted(wanted), present, folder)
    else:
        supers = read_split("fc100", split)
        unknown = sorted(set(supers) - set(coarse_names))
        if unknown:
            raise CorruptDatasetError(
                f"{folder / 'meta'} does not name the FC100 superclasses {unknown[:3]}: not the CIFAR-100 release"
            )
        wanted_coarse = {coarse_names.index(s) for s in supers}
        classes = sorted({fine_names[f] for f, c in zip(fine.tolist(), coarse.tolist()) if c in wanted_coarse})
        if not classes:
            raise CorruptDatasetError(f"{folder} holds no image of the FC100 '{split}' superclasses {supers}")
    classes = classes[:max_classes]
    # train images first, then test
    return classes, [np.flatnonzero(fine == fine_names.index(name))[:max_images] for name in classes]
