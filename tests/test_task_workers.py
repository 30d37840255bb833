"""A meta-batch's tasks trained on worker threads (issue 26, metaplus.algorithms.task_workers): the same
meta-gradient, bit for bit, as the sequential loop at one op thread, the batch-norm running statistics to
float rounding, independent of the threads' timing; and the sequential loop wherever that cannot hold."""

from __future__ import annotations

import threading

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from metaplus.algorithms import MAML, MTNet, Reptile
from metaplus.algorithms.task_workers import (
    accumulate_on_workers,
    draws_random_numbers,
    memory_measurable,
    task_workers,
    workers_allowed,
)
from metaplus.config import ConfigError
from metaplus.data.episodes import Task, TaskBatch, collate_tasks
from metaplus.nn import Conv4, PerStepBatchNorm2d, ResNet12
from metaplus.nn.batchnorm import deferred_running_stats, replay_running_stats
from metaplus.testing import quiet_trainer


def meta_batch(n: int, seed: int = 3) -> TaskBatch:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3)
    tasks = [
        (
            i,
            Task(
                torch.randn(3, 1, 14, 14, generator=g), labels, torch.randn(6, 1, 14, 14, generator=g), labels.repeat(2)
            ),
        )
        for i in range(n)
    ]
    return collate_tasks(tasks)


def mamlpp(**kwargs) -> MAML:
    """MAML++'s inner-loop switches: per-step BN statistics (BNRS) and affine sets, learned rates, MSL."""
    torch.manual_seed(0)
    backbone = Conv4(input_shape=(1, 14, 14), output_dim=3, filters=8, blocks=3)
    return MAML(
        backbone, "classification", inner_steps=2, inner_lr=0.1, bnrs=True, bnwb=True, lslr=True, msl=True, **kwargs
    ).train()


def sequential_step(learner: MAML, batch: TaskBatch) -> tuple[list, list]:
    """The training step's loop without Lightning: each task's loss / n back-propagated in task order."""
    losses, metrics = [], []
    for b in range(len(batch)):
        loss, metric = learner.task_loss(batch[b])
        (loss * (1.0 / len(batch))).backward()
        losses.append(loss.detach())
        metrics.append(metric)
    return losses, metrics


def state_after(learner: MAML, step, batch: TaskBatch) -> tuple[dict, dict, list, list]:
    losses, metrics = step(learner, batch)
    grads = {n: p.grad.clone() for n, p in learner.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in learner.named_buffers() if "running" in n}
    return grads, buffers, losses, metrics


@pytest.fixture
def one_op_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_deferred_running_statistics_replay_to_the_in_place_updates():
    torch.manual_seed(0)
    layer = PerStepBatchNorm2d(4)
    layer.configure(steps=2, per_step_stats=True)
    xs = [(torch.randn(5, 4, 3, 3) * 3 + 1, 0), (torch.randn(5, 4, 3, 3), 1), (torch.randn(5, 4, 3, 3) - 2, 0)]
    recorded = PerStepBatchNorm2d(4)
    recorded.configure(steps=2, per_step_stats=True)
    with deferred_running_stats() as updates:
        outs = [recorded(x, step=s) for x, s in xs]
    assert torch.equal(recorded.running_mean, torch.zeros(2, 4)) and torch.equal(recorded.running_var, torch.ones(2, 4))
    for (x, _), update in zip(xs, updates):  # exactly this batch's statistics were recorded
        torch.testing.assert_close(update.batch_mean, x.mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(update.batch_var, x.var(dim=(0, 2, 3), unbiased=True), rtol=1e-5, atol=1e-6)
    replay_running_stats(updates)
    expected = [layer(x, step=s) for x, s in xs]
    for out, ref in zip(outs, expected):
        assert torch.equal(out, ref)  # the normalised output does not depend on the recording
    torch.testing.assert_close(recorded.running_mean, layer.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(recorded.running_var, layer.running_var, rtol=1e-6, atol=1e-7)
    assert not torch.equal(layer.running_mean[1], torch.zeros(4))


def test_recording_is_per_thread():
    layer = PerStepBatchNorm2d(2)
    layer.configure(per_step_stats=True)
    x = torch.randn(4, 2, 2, 2)
    with deferred_running_stats() as updates:
        other = threading.Thread(target=lambda: layer(x))  # another thread updates in place
        other.start()
        other.join()
    assert updates == [] and not torch.equal(layer.running_mean, torch.zeros(1, 2))


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
def test_workers_give_the_sequential_meta_gradient_bit_for_bit(first_order, one_op_thread):
    batch = meta_batch(5)  # more tasks than workers, an odd count
    seq = state_after(mamlpp(first_order=first_order), sequential_step, batch)
    work = state_after(mamlpp(first_order=first_order), lambda m, b: accumulate_on_workers(m, b, 2), batch)
    grads, grads_w = seq[0], work[0]
    assert grads.keys() == grads_w.keys() and any(n.startswith("inner_lrs") for n in grads)
    for name, grad in grads.items():
        assert grad.abs().max() > 0, f"{name}: a zero meta-gradient compares nothing"
        assert torch.equal(grads_w[name], grad), name
    assert [float(x) for x in work[2]] == [float(x) for x in seq[2]]
    assert [float(x) for x in work[3]] == [float(x) for x in seq[3]]
    stats, stats_w = seq[1], work[1]
    assert stats and stats.keys() == stats_w.keys()
    for name, value in stats.items():
        torch.testing.assert_close(stats_w[name], value, rtol=1e-6, atol=1e-7, msg=name)
    assert torch.get_num_threads() == 1  # map_on_workers restored the thread count


def test_workers_give_the_same_state_every_time():
    batch = meta_batch(6)
    first = state_after(mamlpp(), lambda m, b: accumulate_on_workers(m, b, 3), batch)
    for _ in range(3):
        again = state_after(mamlpp(), lambda m, b: accumulate_on_workers(m, b, 3), batch)
        for a, b in ((first[0], again[0]), (first[1], again[1])):
            assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)


def test_the_training_step_measures_a_task_then_runs_the_tasks_on_as_many_workers_as_torch_threads():
    seen: list[tuple[int, int]] = []
    learner = mamlpp()
    task_loss = learner.task_loss

    def recording(task):
        seen.append((threading.get_ident(), torch.get_num_threads()))
        return task_loss(task)

    learner.task_loss = recording
    trainer = quiet_trainer(max_steps=3)
    loader = DataLoader([meta_batch(4, seed) for seed in range(3)], batch_size=None)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        trainer.fit(learner, loader)
    finally:
        torch.set_num_threads(threads)
    main = threading.get_ident()
    # The first step: one task at a time in the main thread, its first task's memory measured...
    assert seen[:4] == [(main, 2)] * 4
    if memory_measurable():
        assert learner.task_memory is not None and learner.task_memory[0] == 0 and learner.task_memory[1] > 0
    # ...then two workers of one op thread each (a Conv-4 of 8 filters: its graph fits many times).
    assert len(seen) == 12 and {t for _, t in seen[4:]} == {1}
    assert main not in {ident for ident, _ in seen[4:]} and len({ident for ident, _ in seen[4:]}) == 2


@pytest.mark.skipif(not memory_measurable(), reason="needs /proc/self/clear_refs (Linux)")
def test_auto_adds_workers_only_while_their_graphs_fit_in_half_the_available_memory(monkeypatch):
    import metaplus.algorithms.task_workers as tw

    learner = mamlpp()
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        assert task_workers(learner, 8) == 1  # not measured yet: the step measures its first task
        learner.task_memory = (0, 10 * 2**30)  # one task's graph: 10 GiB
        for available, expected in ((64 * 2**30, 4), (41 * 2**30, 3), (20 * 2**30, 2), (19 * 2**30, 1)):
            monkeypatch.setattr(tw, "available_memory", lambda a=available: a)
            assert task_workers(learner, 8) == expected, available
        learner.task_memory = (-1, 1)  # measured in an earlier epoch: measured again
        assert task_workers(learner, 8) == 1
        learner.task_memory, learner.task_workers = None, 3  # a number is taken as given
        assert task_workers(learner, 8) == 3
    finally:
        torch.set_num_threads(threads)


def test_where_workers_do_not_apply_the_sequential_loop_runs():
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:  # workers_allowed: what task_workers allows before the memory rule
        assert workers_allowed(mamlpp(), 8) == 4
        assert workers_allowed(mamlpp(), 4) == 4
        assert workers_allowed(mamlpp(), 3) == 1  # auto: fewer tasks than threads stay on the op threads
        assert workers_allowed(mamlpp(), 1) == 1
        assert workers_allowed(mamlpp(task_workers=2), 8) == 2 and task_workers(mamlpp(task_workers=2), 8) == 2
        assert workers_allowed(mamlpp(task_workers=3), 2) == 2  # a number: at most one worker per task
        assert workers_allowed(mamlpp(task_workers=1), 8) == 1
        assert workers_allowed(mamlpp(checkpoint_steps=True), 8) == 1  # re-parametrises the shared backbone
        assert workers_allowed(mamlpp(engine="batched"), 8) == 1
        backbone = Conv4(input_shape=(1, 14, 14), output_dim=3, filters=4, blocks=2)
        assert workers_allowed(Reptile(backbone, "classification"), 8) == 1
        mtnet_backbone = Conv4(input_shape=(1, 14, 14), output_dim=3, filters=4, blocks=2)
        assert workers_allowed(MTNet(mtnet_backbone, "classification"), 8) == 1
        dropblock = ResNet12(input_shape=[1, 16, 16], output_dim=3, widths=[2, 2, 3, 3], dropblock_rate=0.2)
        assert draws_random_numbers(dropblock) and workers_allowed(MAML(dropblock, "classification"), 8) == 1
        plain = ResNet12(input_shape=[1, 16, 16], output_dim=3, widths=[2, 2, 3, 3])
        assert not draws_random_numbers(plain) and workers_allowed(MAML(plain, "classification"), 8) == 4
        dropout = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.1))
        assert draws_random_numbers(dropout) and not draws_random_numbers(torch.nn.Dropout(0.0))
    finally:
        torch.set_num_threads(threads)


class BackwardHook(L.Callback):
    def on_after_backward(self, trainer, pl_module):
        pass


def test_a_callback_around_each_backward_keeps_the_sequential_loop():
    learner = mamlpp()
    trainer = quiet_trainer(callbacks=[BackwardHook()])
    learner.trainer = trainer
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert workers_allowed(learner, 4) == 1
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("value", [0, -1, 1.5, "two", True])
def test_bad_task_workers_fail_early(value):
    with pytest.raises(ConfigError, match="task_workers"):
        mamlpp(task_workers=value)
