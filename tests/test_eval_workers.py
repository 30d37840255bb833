"""Evaluation episodes on worker threads (issue 26): on the CPU with several torch threads, the episodes of
a validation/test batch are evaluated concurrently, one op thread each, where the learner's evaluation is
the plain adaptation; the figures are those of one thread, exactly."""

from __future__ import annotations

import threading

import pytest
import torch
from torch.utils.data import DataLoader

from metaplus.algorithms import MAML
from metaplus.algorithms.base import EpisodicLearner
from metaplus.data.episodes import Task, collate_tasks
from metaplus.nn import Conv4
from metaplus.testing import quiet_trainer


def image_episodes(n: int) -> list[tuple[int, Task]]:
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(3)
    return [
        (
            i,
            Task(
                torch.randn(3, 1, 14, 14, generator=g), labels, torch.randn(6, 1, 14, 14, generator=g), labels.repeat(2)
            ),
        )
        for i in range(n)
    ]


def mamlpp() -> MAML:
    torch.manual_seed(0)
    backbone = Conv4(input_shape=(1, 14, 14), output_dim=3, filters=8, blocks=3)
    return MAML(
        backbone, "classification", inner_steps=2, test_inner_steps=2, inner_lr=0.1, bnrs=True, bnwb=True, lslr=True
    )


def evaluated(learner: EpisodicLearner, threads: int, record: list) -> dict:
    evaluate = learner.evaluate_task

    def recording(*args, **kwargs):
        record.append((threading.get_ident(), torch.get_num_threads()))
        return evaluate(*args, **kwargs)

    learner.evaluate_task = recording
    trainer = quiet_trainer()
    loader = DataLoader(image_episodes(8), batch_size=4, collate_fn=collate_tasks)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        learner.test_predictions = {}
        (logged,) = trainer.test(learner, dataloaders=loader, verbose=False)
        assert torch.get_num_threads() == threads, "restored after each batch"
    finally:
        torch.set_num_threads(before)
    return {**logged, **learner.adaptation_curves["test"], "kept": dict(learner.test_predictions)}


def test_two_threads_evaluate_two_episodes_at_once_with_the_figures_of_one():
    one_record, two_record = [], []
    one = evaluated(mamlpp(), 1, one_record)
    two = evaluated(mamlpp(), 2, two_record)
    kept_one, kept_two = one.pop("kept"), two.pop("kept")
    assert one == two and sorted(kept_one) == list(range(8))
    assert all(torch.equal(kept_one[i], kept_two[i]) for i in kept_one)
    assert {thread for thread, _ in one_record} == {threading.get_ident()}, "one thread: the calling one"
    workers = {thread for thread, _ in two_record}
    assert len(workers) >= 2 and threading.get_ident() not in workers and {n for _, n in two_record} == {1}


@pytest.mark.parametrize("name", ["pretrain", "reptile", "mtnet"])
def test_learners_with_per_episode_state_stay_on_one_thread(name):
    from metaplus.algorithms import MTNet, Pretrain, Reptile

    cls = {"pretrain": Pretrain, "reptile": Reptile, "mtnet": MTNet}[name]
    assert not cls.supports_batched_engine
    learner = cls.__new__(cls)
    assert not learner.evaluates_episodes_concurrently
