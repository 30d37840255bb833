"""A meta-batch's tasks trained at once on worker threads (CPU): ``algo.task_workers``.

One few-shot task's inner loop is a chain of small operations: spread over several intra-op threads,
they leave the cores partly idle (two op threads train MAML++ mini-ImageNet 5w1s 1.63x faster than one
on 2 cores, two workers 1.93x: bench/results/kernels.md section 5). The tasks of a meta-batch are independent until their meta-gradients are summed, so
each worker thread (one op thread each, :func:`metaplus.threads.map_on_workers`) adapts one task and
takes its meta-gradient with ``torch.autograd.grad``; the step then adds the gradients into ``.grad``
and applies the tasks' batch-norm running-statistics updates in task order. The result does not depend
on the threads' timing: the gradients are bitwise those of the sequential loop at one op thread (the
same sums in the same order), the running statistics equal to float rounding
(:func:`metaplus.nn.batchnorm.replay_running_stats`).

Cost: each worker holds its task's graph until its gradient is taken, so peak memory grows with the
workers (MAML++ mini-ImageNet 5w1s: 3.7 -> 6.3 GB peak RSS with 2 workers, bench/results/task_workers.md). With ``algo.task_workers``
left at null (auto), the first meta-batch of each epoch runs one task at a time and measures the
resident memory its first task's graph takes (Linux: the process's peak during it, reset through
``/proc/self/clear_refs``, less its resident size before); the next steps add workers only while the
extra graphs fit in half the memory available then (``MemAvailable``, within a cgroup limit). Per epoch,
because MAML++'s derivative-order annealing and MSL change the graph's size at epoch boundaries. By this
rule a ResNet-12 second-order task (about 20 GB) stays one at a time on a 24 GB machine (not run). With
auto, every torch thread becomes a worker, and only when the meta-batch has at least as many tasks as threads
(else cores would idle: a 16-core machine keeps its op threads on one task at a time for a meta-batch of
2). A number (``algo.task_workers=2``) is taken as given, each worker on one op thread.

Where it applies (else the sequential loop runs, with all op threads): a CPU process of its own (no
DDP: there each rank gets its share of the cores), the default engine (the checkpointed engine
re-parametrises the shared backbone in place; the batched ones take whole meta-batches), a learner
whose training step is the query loss after adaptation (``supports_batched_engine``: not Reptile,
MT-net or pretrain), a backbone that draws no random numbers in training (DropBlock, dropout: the
tasks would take them from the global generator in the threads' order), and no callback or learner
hook around each backward (Lightning's ``on_before_backward``/``on_after_backward`` run per
``manual_backward``, which workers do not call).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch import Callback, LightningModule
from torch import Tensor, nn

from metaplus.errors import check
from metaplus.inner import CloneAdapt
from metaplus.nn.batchnorm import deferred_running_stats, replay_running_stats
from metaplus.threads import map_on_workers

if TYPE_CHECKING:
    from metaplus.algorithms.base import EpisodicLearner
    from metaplus.data.episodes import TaskBatch

log = logging.getLogger("metaplus")
BACKWARD_HOOKS = ("on_before_backward", "on_after_backward")


def check_task_workers(value: Any) -> None:
    check(
        "task_workers",
        value,
        value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= 1),
        "null (auto: as many as torch threads, memory permitting) or an integer >= 1",
    )


def hooks_each_backward(learner: LightningModule) -> bool:
    """Whether the learner or a trainer callback implements a per-backward hook."""
    if any(getattr(type(learner), h) is not getattr(LightningModule, h) for h in BACKWARD_HOOKS):
        return True
    callbacks = learner.trainer.callbacks if learner._trainer is not None else []
    return any(getattr(type(c), h) is not getattr(Callback, h) for c in callbacks for h in BACKWARD_HOOKS)


def draws_random_numbers(backbone: nn.Module) -> bool:
    """Whether a training forward of ``backbone`` draws random numbers: dropout with p > 0, or a module
    that says so (``draws_random_numbers``, e.g. a ResNet-12 block with DropBlock)."""
    return any(
        (isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0) or getattr(m, "draws_random_numbers", False)
        for m in backbone.modules()
    )


def workers_allowed(learner: EpisodicLearner, tasks: int) -> int:
    """Workers the learner, the run and ``algo.task_workers`` allow for ``tasks`` tasks, memory aside
    (1: where workers do not apply)."""
    if (
        tasks < 2
        or learner.device.type != "cpu"
        or type(learner.inner) is not CloneAdapt
        or not learner.supports_batched_engine
        or draws_random_numbers(learner.backbone)
        or (learner._trainer is not None and learner.trainer.world_size > 1)
        or hooks_each_backward(learner)
    ):
        return 1
    if learner.task_workers is not None:
        return max(min(learner.task_workers, tasks), 1)
    threads = torch.get_num_threads()
    # Auto: every op thread becomes a worker of one op thread, so only with a task for each: with fewer
    # tasks than threads, some cores would idle (a machine with more cores than the meta-batch has tasks
    # keeps its op threads on one task at a time; measured on 2 cores only).
    return threads if tasks >= threads else 1


def task_workers(learner: EpisodicLearner, tasks: int) -> int:
    """How many worker threads train this meta-batch of ``tasks`` tasks (1: the sequential loop)."""
    allowed = workers_allowed(learner, tasks)
    if allowed < 2 or learner.task_workers is not None or not memory_measurable():
        return allowed
    per_task = measured_task_memory(learner)
    if per_task is None:  # this epoch's first step: one task at a time, the first measured (task_memory_probe)
        return 1
    available = available_memory()
    workers = max(1, min(allowed, 1 + int(MEMORY_SHARE * available // per_task)))
    if learner.task_memory_logged != (learner.current_epoch, workers):  # once per epoch and decision
        learner.task_memory_logged = (learner.current_epoch, workers)
        log.info(
            "task workers: %d of %d (one task's graph %.2f GB, %.2f GB available; algo.task_workers)",
            workers,
            allowed,
            per_task / 1e9,
            available / 1e9,
        )
    return workers


#: The share of the available memory that the graphs of workers beyond the first may take.
MEMORY_SHARE = 0.5


def memory_measurable() -> bool:
    return Path("/proc/self/clear_refs").exists() and Path("/proc/meminfo").exists()


def status_kib(field: str) -> int:
    """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def available_memory() -> int:
    """Bytes the process may still take: MemAvailable, within a cgroup (v2 or v1) limit if one is set."""
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    available = int(meminfo["MemAvailable"].split()[0]) * 1024
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    ):
        try:
            limit, usage = Path(limit_file).read_text().strip(), Path(usage_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and usage.isdigit():  # "max": no limit
            available = min(available, max(int(limit) - int(usage), 0))
    return available


def measured_task_memory(learner: EpisodicLearner) -> int | None:
    """Bytes one task's graph took in this epoch's first step, or None before it."""
    record = learner.task_memory
    return record[1] if record is not None and record[0] == learner.current_epoch else None


@contextmanager
def task_memory_probe(learner: EpisodicLearner, tasks: int) -> Iterator[None]:
    """Around the sequential loop's first task: where ``task_workers`` waits for this epoch's measurement,
    take it (the process's resident peak during the task less its resident size before)."""
    if (
        learner.task_workers is not None
        or measured_task_memory(learner) is not None
        or workers_allowed(learner, tasks) < 2
        or not memory_measurable()
    ):
        yield
        return
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = status_kib("VmRSS")
    yield
    learner.task_memory = (learner.current_epoch, max(status_kib("VmHWM") - before, 1) * 1024)


def accumulate_on_workers(
    learner: EpisodicLearner, batch: TaskBatch, workers: int
) -> tuple[list[Tensor], list[Tensor]]:
    """Add the meta-batch's mean meta-gradient to ``.grad`` as the sequential loop does (each task's
    loss weighted 1/n), the tasks adapted on ``workers`` threads; return per-task (losses, metrics)."""
    n = len(batch)
    params = [p for p in learner.parameters() if p.requires_grad]

    def train_task(_, b: int) -> tuple[Tensor, Tensor, tuple[Tensor | None, ...], list]:
        with deferred_running_stats() as stat_updates:
            loss, metric = learner.task_loss(batch[b])
            grads = torch.autograd.grad(loss * (1.0 / n), params, allow_unused=True)
        return loss.detach(), metric, grads, stat_updates

    results = map_on_workers(train_task, ((b, b) for b in range(n)), [None] * workers, learner.parameters())
    losses, metrics = [], []
    for b in range(n):  # task order: the sums and statistics the sequential loop makes
        loss, metric, grads, stat_updates = results.pop(b)
        replay_running_stats(stat_updates)
        for p, g in zip(params, grads):
            if g is None:
                continue
            if p.grad is None:  # as autograd's accumulation: a gradient laid out like its parameter
                p.grad = g if g.stride() == p.stride() else torch.empty_like(p).copy_(g)
            else:
                p.grad.add_(g)
        losses.append(loss)
        metrics.append(metric)
    return losses, metrics
