"""The class splits shipped with metaplus: ``metaplus/data/splits/<dataset>/{train,val,test}.txt``.

One class name per line (``#`` lines are the header naming the split's source). Loaders select the
classes of a split by these names; a copy of a dataset that lacks some of them (a subset made for a
quick trial, or an incomplete download) trains on the ones present and says so in one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from pathlib import Path

from metaplus.data.errors import CorruptDatasetError
from metaplus.data.listing import list_class_folders, list_images

SPLITS_DIR = Path(__file__).resolve().parent / "splits"
log = logging.getLogger("metaplus")


def split_path(dataset: str, split: str) -> Path:
    return SPLITS_DIR / dataset / f"{split}.txt"


def read_split(dataset: str, split: str) -> list[str]:
    """Class names of ``split`` in file order."""
    path = split_path(dataset, split)
    names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if len(set(names)) != len(names):
        raise CorruptDatasetError(f"{path} lists a class twice")
    return names


def present_classes(dataset: str, split: str, wanted: Sequence[str], available: set[str], where: Path) -> list[str]:
    """The split's classes found in ``available`` (in ``wanted`` order); none found is an error, some
    missing is a warning naming how many."""
    found = [name for name in wanted if name in available]
    if not found:
        raise CorruptDatasetError(
            f"{where} holds none of the {len(wanted)} {dataset} '{split}' classes of "
            f"{split_path(dataset, split)} (e.g. {wanted[0]!r})"
        )
    if len(found) < len(wanted):
        missing = [name for name in wanted if name not in available]
        log.warning(
            "%s '%s': %d of the %d classes of the split are missing from %s (e.g. %s): using the %d present",
            dataset,
            split,
            len(missing),
            len(wanted),
            where,
            missing[0],
            len(found),
        )
    return found


def split_folder_classes(
    dataset: str,
    split: str,
    folder: Path,
    known: Collection[str],
    known_from: str,
    max_classes: int | None = None,
    max_images: int | None = None,
) -> list[tuple[str, list[Path]]]:
    """``[(class, [image files])]`` of ``split`` read from the class folders inside ``folder``, sorted by
    name. ``known`` are the names the folder may hold (``known_from`` says where they come from): another
    folder name means a wrong folder, not a subset, and is an error; classes of the split that are absent
    are warned about (:func:`present_classes`); a class folder of the split without images is an error."""
    found = {d.name for d in list_class_folders(folder)}
    strangers = sorted(found - set(known))
    if strangers:
        raise CorruptDatasetError(
            f"{folder} holds folders that are not {known_from}: {strangers[:3]}"
            f"{'...' if len(strangers) > 3 else ''} ({len(strangers)})"
        )
    names = sorted(present_classes(dataset, split, read_split(dataset, split), found, folder))[:max_classes]
    classes = [(name, list_images(folder / name)[:max_images]) for name in names]
    empty = [name for name, files in classes if not files]
    if empty:
        raise CorruptDatasetError(f"{folder / empty[0]} has no images ({len(empty)} empty class folders)")
    return classes
