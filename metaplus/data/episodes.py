"""The episode types every data source produces and every learner consumes.

A *task* (episode) is a support set and a query set. A *task batch* stacks the tasks of one
meta-batch along a leading dimension. Sources only ever build single tasks from a seeded
``torch.Generator``; this module turns indices into reproducible generators.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from typing import Callable, Iterator, Protocol, Sequence

import torch
from torch import Tensor


@dataclass
class Task:
    """One episode: adapt on (support_x, support_y), score on (query_x, query_y).

    Classification labels are episode labels 0..ways-1. ``support_classes``/``query_classes``
    optionally give each example's global class id within its split (what a pre-training baseline
    trains on); regression tasks leave them None.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    support_classes: Tensor | None = None
    query_classes: Tensor | None = None


@dataclass
class TaskBatch:
    """A meta-batch of tasks stacked on dim 0; ``index`` identifies each episode (fixed for val/test)."""

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    index: Tensor
    support_classes: Tensor | None = None
    query_classes: Tensor | None = None

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, b: int) -> Task:
        return Task(self.support_x[b], self.support_y[b], self.query_x[b], self.query_y[b],
                    _item(self.support_classes, b), _item(self.query_classes, b))

    def pin_memory(self) -> "TaskBatch":
        """The batch with every tensor in page-locked memory, so that its copy to a GPU can run
        asynchronously. ``DataLoader(pin_memory=True)`` calls this on custom batch types; without it the
        loader returns the batch unpinned."""
        return TaskBatch(**{f.name: _pinned(getattr(self, f.name)) for f in fields(self)})

    def split(self, parts: int, part: int) -> "TaskBatch":
        """The ``part``-th of ``parts`` equal slices (used to share a meta-batch across ranks)."""
        n = len(self)
        if n % parts:
            raise ValueError(f"a meta-batch of {n} tasks cannot be split evenly into {parts} parts")
        size = n // parts
        sl = slice(part * size, (part + 1) * size)
        return TaskBatch(self.support_x[sl], self.support_y[sl], self.query_x[sl], self.query_y[sl], self.index[sl],
                         _item(self.support_classes, sl), _item(self.query_classes, sl))


def _pinned(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.pin_memory()


def _item(t: Tensor | None, key):
    return None if t is None else t[key]


def _stack(tensors: Sequence[Tensor | None]) -> Tensor | None:
    return None if any(t is None for t in tensors) else torch.stack(tensors)


def collate_tasks(items: Sequence[tuple[int, Task]]) -> TaskBatch:
    indices, tasks = zip(*items)
    return TaskBatch(
        support_x=torch.stack([t.support_x for t in tasks]),
        support_y=torch.stack([t.support_y for t in tasks]),
        query_x=torch.stack([t.query_x for t in tasks]),
        query_y=torch.stack([t.query_y for t in tasks]),
        index=torch.tensor(indices, dtype=torch.long),
        support_classes=_stack([t.support_classes for t in tasks]),
        query_classes=_stack([t.query_classes for t in tasks]),
    )


class TaskSource(Protocol):
    """Anything that can draw one task from a generator (sinusoids, Omniglot classes, ...).

    Built by ``source_factory(split=...)`` from the data config's ``source`` node. Classification
    sources also expose ``num_classes`` (classes in their split). Image sources also have
    ``sample_pixels`` (the same task with uint8 images) and ``normalise`` (uint8 -> ``sample``'s floats).
    """

    def sample(self, generator: torch.Generator) -> Task: ...


def episode_seed(*keys: object) -> int:
    """A stable 63-bit seed from any keys (not Python's salted ``hash``), same on every machine."""
    digest = hashlib.blake2b(repr(keys).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def episode_generator(*keys: object) -> torch.Generator:
    return torch.Generator().manual_seed(episode_seed(*keys))


class EpisodeDataset(torch.utils.data.Dataset):
    """Maps an index to a task drawn from ``source`` with a generator seeded by (keys, epoch, index).

    Validation and test datasets use a constant epoch, so episode ``i`` is the same episode in every
    run and for every algorithm; training datasets are indexed by ``(epoch, i)`` pairs from an
    :class:`EpochSampler`, so each epoch draws new tasks while a resumed run redraws exactly the tasks
    it would have seen. A plain index ``i`` reads the epoch from ``epoch_fn``.

    ``pixels=True`` draws image episodes with uint8 pixels (``source.sample_pixels``), for a batch
    that is normalised after it reached its device; sources without it draw as ``sample`` does.
    """

    def __init__(self, source: TaskSource, length: int, keys: tuple, epoch_fn=lambda: 0, pixels: bool = False):
        self.source, self.length, self.keys, self.epoch_fn = source, length, keys, epoch_fn
        self.draw = getattr(source, "sample_pixels", source.sample) if pixels else source.sample

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[int, Task]:
        epoch, index = index if isinstance(index, tuple) else (self.epoch_fn(), index)
        return index, self.draw(episode_generator(*self.keys, epoch, index))


class EpochSampler(torch.utils.data.Sampler):
    """``(epoch, i)`` for i = 0..length-1, the epoch read from ``epoch_fn`` when an epoch's iteration
    starts. The sampler runs in the main process, so the epoch reaches loader workers with each index:
    a worker's own copy of the training state (kept across epochs with ``persistent_workers``) would
    go on drawing its first epoch's tasks. Under DDP Lightning wraps it in a distributed sampler that
    hands each rank every world-size-th pair, as it hands out plain indices."""

    def __init__(self, length: int, epoch_fn: Callable[[], int]):
        self.length, self.epoch_fn = length, epoch_fn

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch_fn()
        return ((epoch, i) for i in range(self.length))


def float_inputs(x) -> Tensor:
    """The preprocessing of sources without images (regression): numbers as the float32 tensor their
    tasks hold."""
    return torch.as_tensor(x, dtype=torch.float32)


def uniform(generator: torch.Generator, low: float, high: float, size=()) -> Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)
