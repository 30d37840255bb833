"""Any folder-per-class image set as few-shot episodes (``data=imagefolder``).

Two ways to split classes into train/val/test (``data.split``):
- ``folders``: ``root/{train,val,test}/<class>/<image>``, the split given by the folders;
- ``ratios``: ``root/<class>/<image>``; each class goes to the split its name hashes to:
  ``u = sha256("<split_seed>/<class name>")`` read as a number in [0, 1), train if
  ``u < ratios[0]``, val if ``u < ratios[0] + ratios[1]``, else test. A class's split depends on its
  own name only, so adding or removing a class folder never moves another class (a seeded shuffle
  of the whole list would reshuffle almost every split), and the split is the same on every machine.
  Split sizes follow the ratios in expectation, not exactly;
- ``auto`` (default): ``folders`` when ``root/train`` exists, else ``ratios``.
Images are converted to ``channels`` (1: grey, 3: RGB), resized to ``image_size`` squares, decoded
once into a uint8 cache, and normalised with ``mean``/``std`` per channel (:func:`preprocessing`).

Files in class folders that are not images, and class folders without images, are skipped and
reported in one warning line. Each source's class list is recorded in results.json
(``data_classes``, via :meth:`EpisodicDataModule.class_lists`).
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path

from metaplus.data.cache import load_image_files
from metaplus.data.errors import CorruptDatasetError, DatasetNotFoundError
from metaplus.data.image_source import SPLITS, ImageSource
from metaplus.data.listing import IMAGE_SUFFIXES, folder_classes, is_image, list_class_folders
from metaplus.data.preprocessing import Preprocessing
from metaplus.errors import check, check_choice, check_int


def preprocessing(
    image_size: int = 84, channels: int = 3, mean: Sequence[float] = (0.5,), std: Sequence[float] = (0.5,)
) -> Preprocessing:
    """An image folder's input: grey (``channels=1``) or RGB, resized to ``image_size`` (Lanczos),
    ``(x / 255 - mean) / std``. The sources decode and normalise with it; ``metaplus.load(...).preprocess``
    is it."""
    return Preprocessing("RGB" if channels == 3 else "L", image_size, mean=tuple(mean), std=tuple(std))


class ImageFolderTasks(ImageSource):
    class_splits = ("auto", "folders", "ratios")
    root_holds = "the image folder"
    # The datamodule records this source's classes in results.json (the split is data-dependent).
    record_classes = True

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
        root_path = self.checked_root(split, class_split, image_size, root, max_classes, max_images_per_class)
        check_choice("source.channels", channels, {1, 3})
        check_int("source.split_seed", split_seed, 0)
        check(
            "source.ratios",
            ratios,
            len(ratios) == 3 and all(r > 0 for r in ratios) and abs(sum(ratios) - 1) < 1e-6,
            "three positive fractions (train, val, test) summing to 1",
        )
        if not root_path.is_dir():
            raise DatasetNotFoundError(
                f"image folder not found: looked for {root_path}, expected <class>/<image> "
                f"or {{train,val,test}}/<class>/<image> inside it; set data.root"
            )
        if class_split == "auto":
            class_split = "folders" if (root_path / "train").is_dir() else "ratios"
        if class_split == "folders":
            classes = split_folder(root_path, split, max_classes, max_images_per_class)
        else:
            classes = ratio_split(root_path, split, ratios, split_seed, max_classes, max_images_per_class)
        prep = preprocessing(image_size, channels, mean, std)
        data = load_image_files(
            "imagefolder",
            split,
            classes,
            root_path,
            prep.mode,
            prep.size,
            cache_dir,
            class_split=class_split,
            ratios=list(ratios),
            split_seed=split_seed,
            max_classes=max_classes,
            max_images_per_class=max_images_per_class,
        )
        super().__init__(data, prep, ways, shots, queries, split)


def split_folder(root: Path, split: str, max_classes, max_images) -> list:
    folder = root / split
    if not folder.is_dir():
        raise DatasetNotFoundError(
            f"split '{split}' not found: looked for {folder}/<class>/<image> (data.split=folders); "
            f"use data.split=ratios to split the classes of {root} by ratio instead"
        )
    warn_skipped(folder)
    classes = folder_classes(folder, max_classes, max_images)
    if not classes:
        raise CorruptDatasetError(f"{folder} holds no <class>/<image> files")
    return classes


def hash_fraction(name: str, seed: int) -> float:
    """A number in [0, 1) fixed by (seed, class name) alone, the same on every machine and Python."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(name: str, ratios: Sequence[float], seed: int) -> str:
    """The split a class named ``name`` belongs to under ``data.split=ratios``."""
    u = hash_fraction(name, seed)
    return "train" if u < ratios[0] else "val" if u < ratios[0] + ratios[1] else "test"


def ratio_split(root: Path, split: str, ratios: Sequence[float], seed: int, max_classes, max_images) -> list:
    warn_skipped(root)
    classes = folder_classes(root, max_classes, max_images)
    sizes = {s: 0 for s in SPLITS}
    chosen = []
    for name, files in classes:
        where = split_of(name, ratios, seed)
        sizes[where] += 1
        if where == split:
            chosen.append((name, files))
    if min(sizes.values()) < 1:
        raise CorruptDatasetError(
            f"{root} has {len(classes)} class folders with images: hashing their names with "
            f"split_seed={seed} by ratios {list(ratios)} leaves a split empty (sizes {sizes}); "
            f"add classes, try another data.source.split_seed, or lay the folder out as "
            f"train/ val/ test/ (data.split=folders)"
        )
    return chosen


_REPORTED: set[str] = set()  # the train, val and test sources scan the same folder: warn once per content


def warn_skipped(folder: Path) -> None:
    """One warning line naming the files that are not images and the class folders without images."""
    skipped, empty = [], []
    for class_folder in list_class_folders(folder):
        entries = [p for p in class_folder.iterdir() if not p.name.startswith(".")]
        images = [p for p in entries if is_image(p)]
        skipped += [f"{class_folder.name}/{p.name}" for p in entries if p not in images]
        if not images:
            empty.append(class_folder.name)
    if not skipped and not empty:
        return
    message = (
        f"image folder {folder}: skipped {len(skipped)} entries that are not images "
        f"({', '.join(sorted(skipped)[:5])}{', ...' if len(skipped) > 5 else ''}) and "
        f"{len(empty)} class folders without images ({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}); "
        f"images end in {' '.join(IMAGE_SUFFIXES)}"
    )
    if message not in _REPORTED:
        _REPORTED.add(message)
        warnings.warn(message, stacklevel=2)
