"""Meta-batches, a Conv-4 and meta-gradients for comparing the inner-loop engines (learn2learn clones,
batched torch.func) and hand-written meta-gradients against them, in float64."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from metaplus.data.episodes import TaskBatch
from metaplus.inner import BatchedAdapt
from metaplus.nn import Conv4
from metaplus.testing import quiet_trainer


def image_batch(tasks=3, ways=3, shots=2, queries=2, shape=(1, 16, 16), seed=0) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(ways).repeat_interleave(shots).repeat(tasks, 1)
    query_y = torch.arange(ways).repeat_interleave(queries).repeat(tasks, 1)
    rand = lambda n: torch.randn(tasks, n, *shape, generator=g, dtype=torch.float64)
    return TaskBatch(rand(ways * shots), support_y, rand(ways * queries), query_y, torch.arange(tasks))


def regression_batch(tasks=4, shots=5, queries=7, seed=1) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(tasks, *shape, generator=g, dtype=torch.float64)
    return TaskBatch(rand(shots, 1), rand(shots, 1), rand(queries, 1), rand(queries, 1), torch.arange(tasks))


def conv4():
    return Conv4(input_shape=[1, 16, 16], output_dim=3, filters=4)


def at_epoch(learner, epoch: int):
    """A real idle Trainer at ``epoch`` (MSL reads its weights from the epoch); plain backward."""
    trainer = quiet_trainer(max_epochs=100)
    trainer.fit_loop.epoch_progress.current.completed = epoch
    learner.trainer = trainer
    learner.manual_backward = lambda loss: loss.backward()
    learner.gradient_sync = lambda last: nullcontext()
    return learner


def meta_gradients(make_learner, batch: TaskBatch, engine, epoch: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    learner = at_epoch(make_learner(engine).double(), epoch)
    assert isinstance(learner.inner, BatchedAdapt) == (engine == "batched")
    learner.accumulate_meta_batch(batch)  # the training step's own dispatch
    return {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
