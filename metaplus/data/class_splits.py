"""The class splits shipped with metaplus: ``metaplus/data/splits/<dataset>/{train,val,test}.txt``.

One class name per line (``#`` lines are the header naming the split's source). Loaders select the
classes of a split by these names; a copy of a dataset that lacks some of them (a subset made for a
quick trial, or an incomplete download) trains on the ones present and says so in one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from metaplus.data.errors import CorruptDatasetError

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
