"""Episodic data: task types, one module per source, and the one datamodule that serves them all."""

from metaplus.data.datamodule import EpisodicDataModule
from metaplus.data.episodes import Task, TaskBatch, TaskSource

__all__ = ["EpisodicDataModule", "Task", "TaskBatch", "TaskSource"]
