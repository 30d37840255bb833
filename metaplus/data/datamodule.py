"""One LightningDataModule for every episodic source: meta-batches for training, fixed episodes for
validation and test.

Training episode ``i`` of epoch ``e`` is drawn from seed (seed, "train", e, i): tasks never repeat
across epochs, differ across DDP ranks (the distributed sampler hands ranks disjoint indices), and a
resumed run sees exactly the tasks an uninterrupted one would. The epoch travels with each index from
the main process (:class:`EpochSampler`), so loader workers (``data.num_workers``, kept alive across
epochs) draw the right epoch's tasks. Validation/test episode ``i`` is drawn from (eval_seed, split, i):
the same for every run, seed and algorithm.

Image episodes travel to the device as uint8 pixels when Lightning moves them (4x fewer bytes than
float32) and are normalised there, in :meth:`EpisodicDataModule.on_after_batch_transfer`, bit for bit
as the CPU would have; loaders asked for outside a running trainer yield normalised batches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from torch.utils.data import DataLoader

from metaplus.data.episodes import EpisodeDataset, EpochSampler, TaskBatch, TaskSource, collate_tasks
from metaplus.errors import ConfigError, check, check_choice, check_int

SPLITS = ("train", "val", "test")


class EpisodicDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: Callable[..., TaskSource],
        name: str,
        task: str,
        shots: int,
        queries: int,
        meta_batch_size: int,
        batches_per_epoch: int,
        val_episodes: int,
        test_episodes: int,
        input_shape: Sequence[int],
        output_dim: int,
        ways: int | None = None,
        root: str | None = None,
        split: str | None = None,
        image_size: int | None = None,
        download: bool = False,
        cache_dir: str | None = None,
        eval_seed: int = 0,
        eval_batch_size: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        train_shots: int | None = None,
    ):
        super().__init__()
        check_choice("task", task, {"regression", "classification"})
        check_int("shots", shots, 1)
        check_int("queries", queries, 1)
        check_int("meta_batch_size", meta_batch_size, 1)
        check_int("batches_per_epoch", batches_per_epoch, 1)
        check_int("val_episodes", val_episodes, 1)
        check_int("test_episodes", test_episodes, 1)
        check_int("output_dim", output_dim, 1)
        check_int("num_workers", num_workers, 0)
        if train_shots is not None:
            check_int("train_shots", train_shots, 1)
        if task == "classification":
            check_int("ways", ways, 2)
        check(
            "input_shape",
            input_shape,
            len(input_shape) >= 1 and all(int(d) > 0 for d in input_shape),
            "a list of positive sizes",
        )
        self.source_factory, self.name, self.task = source, name, task
        self.shots, self.queries, self.ways, self.root = shots, queries, ways, root
        # Training tasks may have more labelled examples per class than test tasks (Reptile's
        # few-shot setting trains on 10 or 15 per class and tests 1- or 5-shot).
        self.train_shots = train_shots
        # Read by image sources through interpolation (``${data.split}``, ...); kept here so that
        # every documented ``data.*`` key is a checked constructor argument.
        self.split, self.image_size, self.download, self.cache_dir = split, image_size, download, cache_dir
        self.meta_batch_size, self.batches_per_epoch = meta_batch_size, batches_per_epoch
        self.val_episodes, self.test_episodes = val_episodes, test_episodes
        self.input_shape, self.output_dim = tuple(int(d) for d in input_shape), output_dim
        self.eval_seed, self.seed, self.num_workers = eval_seed, seed, num_workers
        self.eval_batch_size = eval_batch_size or meta_batch_size
        self.sources: dict[str, TaskSource] = {}

    # -- sources -------------------------------------------------------------------------------
    def source(self, split: str) -> TaskSource:
        """The task source of ``split``, built once (image sources decode their data here)."""
        if split not in self.sources:
            try:
                more = {"shots": self.train_shots} if split == "train" and self.train_shots else {}
                self.sources[split] = self.source_factory(split=split, **more)
            except ConfigError as err:
                raise err.within("data") from None
        return self.sources[split]

    def class_lists(self) -> dict[str, list[str]]:
        """The classes of every split built so far, for sources whose split depends on the data found
        (``record_classes = True``, e.g. image folders): run.py records them in results.json."""
        return {
            split: list(source.class_names)
            for split, source in self.sources.items()
            if getattr(source, "record_classes", False)
        }

    def setup(self, stage: str | None = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(stage, SPLITS)
        for split in needed:
            self.source(split)

    # -- loaders -------------------------------------------------------------------------------
    def current_epoch(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.current_epoch if trainer is not None else 0

    def world_size(self) -> int:
        trainer = getattr(self, "trainer", None)
        return trainer.world_size if trainer is not None else 1

    def sends_pixels(self) -> bool:
        """Whether loaders yield uint8 image batches: only to a running trainer, which calls
        :meth:`on_after_batch_transfer` on every batch it moves (other callers get model inputs)."""
        trainer = getattr(self, "trainer", None)
        return trainer is not None and trainer.state.status == TrainerStatus.RUNNING

    def train_dataloader(self) -> DataLoader:
        # Each rank loads its share of the meta-batch; the distributed sampler keeps shares disjoint.
        world = self.world_size()
        if self.meta_batch_size % world:
            raise ValueError(
                f"data.meta_batch_size={self.meta_batch_size} must be divisible by the "
                f"number of processes ({world}) so each rank adapts the same number of tasks"
            )
        per_rank = self.meta_batch_size // world
        length = self.batches_per_epoch * self.meta_batch_size
        dataset = EpisodeDataset(self.source("train"), length, keys=(self.seed, "train"), pixels=self.sends_pixels())
        return self._loader(dataset, per_rank, drop_last=True, sampler=EpochSampler(length, self.current_epoch))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val", self.val_episodes)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test", self.test_episodes)

    def _eval_loader(self, split: str, episodes: int) -> DataLoader:
        dataset = EpisodeDataset(self.source(split), episodes, keys=(self.eval_seed, split), pixels=self.sends_pixels())
        return self._loader(dataset, self.eval_batch_size, drop_last=False)

    def _loader(self, dataset, batch_size: int, drop_last: bool, sampler=None) -> DataLoader:
        # shuffle=False also tells Lightning not to shuffle the distributed sampler it puts around ours.
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=False,
            sampler=sampler,
            drop_last=drop_last,
            collate_fn=collate_tasks,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    # -- on the device -------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Lightning's hook, once the batch is on its device: uint8 pixels become the model's inputs there."""
        return self.normalise(batch, self.stage_split())

    def normalise(self, batch: TaskBatch, split: str) -> TaskBatch:
        """``batch`` with its uint8 images normalised as ``split``'s source normalises them (other
        batches as they are), on the batch's device."""
        if not isinstance(batch, TaskBatch) or batch.support_x.dtype != torch.uint8:
            return batch
        source = self.source(split)
        return replace(batch, support_x=source.normalise(batch.support_x), query_x=source.normalise(batch.query_x))

    def stage_split(self) -> str:
        """The split the running trainer is drawing batches from."""
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.training:
            return "train"
        return "test" if trainer is not None and trainer.testing else "val"
