"""The episode types every data source produces and every learner consumes.

A *task* (episode) is a support set and a query set. A *task batch* stacks the tasks of one
meta-batch along a leading dimension. Sources only ever build single tasks from a seeded
``torch.Generator``; this module turns indices into reproducible generators.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import KW_ONLY, dataclass, fields
from typing import Protocol

import torch
from torch import Tensor


@dataclass
class TaskFields:
    """The tensors of an episode, declared once for :class:`Task` (one episode) and :class:`TaskBatch`
    (a meta-batch of them stacked on dim 0).

    Classification labels are episode labels 0..ways-1. ``support_classes``/``query_classes``
    optionally give each example's global class id within its split (what a pre-training baseline
    trains on); regression tasks leave them None. They are keyword-only: a batch's ``index`` comes
    right after ``query_y``.
    """

    support_x: Tensor
    support_y: Tensor
    query_x: Tensor
    query_y: Tensor
    _: KW_ONLY
    support_classes: Tensor | None = None
    query_classes: Tensor | None = None


@dataclass
class Task(TaskFields):
    """One episode: adapt on (support_x, support_y), score on (query_x, query_y)."""


@dataclass
class TaskBatch(TaskFields):
    """A meta-batch of tasks stacked on dim 0; ``index`` identifies each episode (fixed for val/test)."""

    index: Tensor

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def __getitem__(self, b: int) -> Task:
        return _each_field(Task, self, lambda t: t[b])

    def pin_memory(self) -> TaskBatch:
        """The batch with every tensor in page-locked memory, so that its copy to a GPU can run
        asynchronously. ``DataLoader(pin_memory=True)`` calls this on custom batch types; without it the
        loader returns the batch unpinned."""
        return _each_field(TaskBatch, self, lambda t: t.pin_memory())

    def split(self, parts: int, part: int) -> TaskBatch:
        """The ``part``-th of ``parts`` equal slices (used to share a meta-batch across ranks)."""
        n = len(self)
        if n % parts:
            raise ValueError(f"a meta-batch of {n} tasks cannot be split evenly into {parts} parts")
        size = n // parts
        sl = slice(part * size, (part + 1) * size)
        return _each_field(TaskBatch, self, lambda t: t[sl])


def _each_field(cls: type, source: TaskFields, apply: Callable[[Tensor], Tensor]):
    """A ``cls`` whose every field is ``apply(source.field)`` (a None field stays None)."""
    values = {f.name: getattr(source, f.name) for f in fields(cls)}
    return cls(**{name: None if t is None else apply(t) for name, t in values.items()})


def collate_tasks(items: Sequence[tuple[int, Task]]) -> TaskBatch:
    indices, tasks = zip(*items)
    stacked = {f.name: [getattr(t, f.name) for t in tasks] for f in fields(Task)}
    # An optional field is stacked only when every task has it.
    return TaskBatch(
        index=torch.tensor(indices, dtype=torch.long),
        **{name: None if any(t is None for t in values) else torch.stack(values) for name, values in stacked.items()},
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


def seeded_permutation(n: int, seed: int) -> list[int]:
    """A permutation of ``range(n)`` fixed by ``seed`` (e.g. the classes held out for validation)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


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
