"""N-way K-shot episodes drawn from a :class:`ClassImages` held in memory: a few tensor indexing
operations per episode, no file access."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from metaplus.config import check, check_int
from metaplus.data.class_images import ClassImages
from metaplus.data.episodes import Task
from metaplus.data.preprocessing import check_mean_std, normalise_pixels


class ImageEpisodes:
    """N-way K-shot episodes drawn from a :class:`ClassImages` held in memory.

    ``sample`` picks ``ways`` distinct classes in random order (the order gives the episode labels
    0..ways-1), then ``shots + queries`` distinct images of each class: the first ``shots`` form the
    support set, the rest the query set (``queries`` is per class). Images become float tensors
    ``(x / 255 - mean) / std`` per channel. ``sample_pixels`` draws the same episode with its uint8
    pixels, 4x fewer bytes to move to a GPU, where ``normalise`` finishes it.
    """

    def __init__(
        self,
        data: ClassImages,
        ways: int,
        shots: int,
        queries: int,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
        split: str = "train",
    ):
        check_int("source.ways", ways, 2)
        check_int("source.shots", shots, 1)
        check_int("source.queries", queries, 1)
        check_mean_std(mean, std, data.images.shape[1])
        check(
            "source.ways",
            ways,
            ways <= data.num_classes,
            f"at most the {data.num_classes} classes of the '{split}' split",
        )
        per_class = shots + queries
        fewest = int(data.counts.min()) if data.num_classes else 0
        if fewest < per_class:
            poorest = data.class_names[int(data.counts.argmin())]
            check(
                "source.shots",
                shots,
                False,
                f"such that shots + queries ({per_class}) <= the images of every class; "
                f"class '{poorest}' of the '{split}' split has only {fewest}",
            )
        self.data, self.ways, self.shots, self.queries, self.split = data, ways, shots, queries, split
        self.offsets, self.counts = data.offsets, data.counts
        self.max_count = int(data.counts.max())
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    def sample(self, generator: torch.Generator) -> Task:
        """An episode with float (normalised) images."""
        task = self.sample_pixels(generator)
        return replace(task, support_x=self.normalise(task.support_x), query_x=self.normalise(task.query_x))

    def normalise(self, pixels: Tensor) -> Tensor:
        """uint8 images of this source -> the float inputs the learner takes, on the pixels' device."""
        return normalise_pixels(pixels, self.mean, self.std)

    def sample_pixels(self, generator: torch.Generator) -> Task:
        """An episode with uint8 images (the same episode ``sample`` draws from this generator)."""
        ways, shots, per_class = self.ways, self.shots, self.shots + self.queries
        classes = torch.randperm(self.num_classes, generator=generator)[:ways]
        # Distinct examples per class in one shot: rank random keys, padding slots sort last.
        keys = torch.rand(ways, self.max_count, generator=generator)
        counts = self.counts[classes]
        if int(counts.min()) < self.max_count:
            keys.masked_fill_(torch.arange(self.max_count) >= counts[:, None], 2.0)
        picks = keys.argsort(dim=1)[:, :per_class] + self.offsets[classes][:, None]
        labels = torch.arange(ways)[:, None]
        support, query = picks[:, :shots], picks[:, shots:]
        return Task(
            support_x=self.pixels_at(support),
            support_y=labels.expand_as(support).flatten(),
            query_x=self.pixels_at(query),
            query_y=labels.expand_as(query).flatten(),
            support_classes=classes[:, None].expand_as(support).flatten(),
            query_classes=classes[:, None].expand_as(query).flatten(),
        )

    def pixels_at(self, rows: Tensor) -> Tensor:
        """uint8 images of ``rows`` (any shape; flattened, class-major)."""
        return self.data.images.index_select(0, rows.flatten())

    def images_at(self, rows: Tensor) -> Tensor:
        """Normalised float images of ``rows`` (any shape; flattened, class-major)."""
        return self.normalise(self.pixels_at(rows))
