"""All images of one split, grouped by class, in one uint8 tensor: what every image source serves from.

Every image dataset (Omniglot, mini-ImageNet, any folder of class folders) ends up as one
:class:`ClassImages`: the images of a split in one uint8 tensor ``[N, C, H, W]``, grouped by class
(class ``c`` owns rows ``offsets[c] : offsets[c] + counts[c]``). :func:`decode_classes` builds one
from image files or archive members; :mod:`metaplus.data.cache` keeps it on disk between runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from metaplus.data.preprocessing import decode_image


@dataclass
class ClassImages:
    """All images of one split, grouped by class: ``images[offsets[c] : offsets[c] + counts[c]]``."""

    images: Tensor  # uint8 [N, C, H, W]
    counts: Tensor  # long [num_classes]
    class_names: list[str]

    @property
    def offsets(self) -> Tensor:
        return torch.cumsum(self.counts, 0) - self.counts

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def of_class(self, c: int) -> Tensor:
        start = int(self.offsets[c])
        return self.images[start : start + int(self.counts[c])]

    def select(self, classes: Sequence[int]) -> ClassImages:
        """A new set holding only ``classes`` (in that order)."""
        parts = [self.of_class(c) for c in classes]
        return ClassImages(
            torch.cat(parts) if parts else self.images[:0],
            self.counts[list(classes)].clone(),
            [self.class_names[c] for c in classes],
        )


def decode_classes(
    classes: Sequence[tuple[str, Sequence[object]]],
    read: Callable[[object], bytes | Path],
    describe: Callable[[object], str],
    mode: str,
    size: int,
    invert: bool = False,
) -> ClassImages:
    """Decode ``[(class_name, [item, ...]), ...]``; ``read(item)`` gives bytes or a path to decode."""
    channels = len(mode)
    total = sum(len(items) for _, items in classes)
    images = torch.empty(total, channels, size, size, dtype=torch.uint8)
    row = 0
    for _, items in classes:
        for item in items:
            images[row] = decode_image(read(item), describe(item), mode, size, invert)
            row += 1
    counts = torch.tensor([len(items) for _, items in classes], dtype=torch.long)
    return ClassImages(images, counts, [name for name, _ in classes])
