"""No host round-trips in the hot loop: every learner, both engines, model and batch on a non-CPU device.

A GPU step that reads a value back (``.item()``, ``float(t)``, ``bool(t)``, ``.tolist()``, a copy to
the CPU) waits for every kernel queued before it; a tensor made on the CPU and copied to the device
is a blocking transfer (pageable memory). Neither shows on a CPU-only machine, where host and device
are one. So these tests put the model and the batch on PyTorch's ``meta`` device (shapes without
data: it computes nothing but dispatches every operator) and record, with a ``TorchDispatchMode``,
every operator of the step that
- reads a device value on the host (``aten._local_scalar_dense``: ``.item()``, ``bool``, ``float``,
  ``.tolist()``),
- copies between the CPU and the device in either direction,
- or makes a CPU tensor at all (the first half of a host->device copy).
A step that does any of these outside the allowlist below fails, with the operator and the line of
metaplus that issued it.

ALLOWLIST (also in the README): what the hot loop may still do on the host, and why.
- ``torch.optim``'s ``optimizer.step()``: Adam and SGD keep their step counter on the host by
  PyTorch's design (a CPU scalar tensor; the bias correction is computed on the host, no device
  value is read). The step runs outside the recording.
- MT-net (``use_M``): one host->device copy per meta-batch, in ``on_*_batch_start`` (and one per
  ``adapt_to`` call): the mask noise, drawn on the CPU from per-episode seeded generators (so every
  device draws the same masks), all tasks and layers in one tensor (pinned, non-blocking on CUDA).
  The episode indices that seed it are read in ``on_before_batch_transfer``, while still on the host.
- Lightning's transfer of the batch itself (the data path), not recorded.
- Outside the step, once per epoch or per evaluation: MSL weights for the epoch (computed and moved
  to the device in ``on_train_epoch_start``), logged learned rates, MT-net's T changes, the
  evaluation summary (means and CIs for results.json), ``AdaptedLearner.score`` (returns floats by
  definition). Not recorded here.
"""

from __future__ import annotations

import traceback
from contextlib import contextmanager, nullcontext
from numbers import Number

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torchmetrics import Metric

from metaplus.algorithms import ANIL, MAML, MetaSGD, MTNet, Pretrain, Reptile
from metaplus.data.episodes import TaskBatch
from metaplus.nn import MLP, Conv4
from metaplus.testing import quiet_trainer

DEVICE = torch.device("meta")
aten = torch.ops.aten
COPIES = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default, aten._copy_from_and_resize.default}
DATA_DEPENDENT = {
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.bincount.default,
}


def metaplus_frames() -> str:
    """The metaplus lines (and this test's) that led to the current operator: where to look."""
    frames = [f for f in traceback.extract_stack() if "/metaplus/" in f.filename]
    return " <- ".join(f"{f.filename.rsplit('/metaplus/', 1)[1]}:{f.lineno} {f.line}" for f in reversed(frames[-3:]))


class HostTraffic(TorchDispatchMode):
    """Records device->host reads, CPU<->device copies and CPU tensors made while it is active."""

    def __init__(self):
        super().__init__()
        self.events: list[tuple[str, str, str]] = []  # (section, what, where)
        self.paused, self.section = False, "step"

    def record(self, what: str, func) -> None:
        if not self.paused:
            self.events.append(
                (self.section, what, f"{what} ({func}) in {self.section} at {metaplus_frames() or 'outside metaplus'}")
            )

    @contextmanager
    def inside(self, section: str):
        """Label what is recorded meanwhile (the allowlist is per section)."""
        self.section, before = section, self.section
        try:
            yield
        finally:
            self.section = before

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and args[0].device.type != "cpu":
            self.record("device->host read", func)
            # meta tensors hold no value: answer as a finite, non-zero number so the step goes on
            dtype = args[0].dtype
            return True if dtype == torch.bool else (1.0 if dtype.is_floating_point else 1)
        if func in DATA_DEPENDENT and not self.paused:  # output shape read from device values: a sync
            self.record("data-dependent shape", func)
            raise AssertionError("host round-trips so far:\n" + "\n".join(e[2] for e in self.events))
        try:
            out = func(*args, **kwargs)
        except (NotImplementedError, RuntimeError) as error:  # e.g. boolean-mask indexing on meta
            if "nonzero" not in str(error) and "data-dependent" not in str(error):
                raise
            self.record("data-dependent shape", func)
            raise AssertionError("host round-trips so far:\n" + "\n".join(e[2] for e in self.events)) from None
        if func in COPIES:
            source = args[1] if func is aten.copy_.default else args[0]
            target = args[0] if func is aten.copy_.default else out
            if isinstance(source, torch.Tensor) and source.device != target.device:
                self.record(f"copy {source.device.type}->{target.device.type}", func)
        elif any(isinstance(t, torch.Tensor) and t.device.type == "cpu" for t in tree_flatten(out)[0]):
            self.record("CPU tensor made", func)
        return out


@contextmanager
def paused(traffic: HostTraffic):
    traffic.paused, before = True, traffic.paused
    try:
        yield
    finally:
        traffic.paused = before


def check_logged(events: list[str]):
    """``self.log`` stand-in: a Python number or a CPU tensor becomes a host->device copy in Lightning."""

    def log(name, value, *args, **kwargs):
        if isinstance(value, Metric):
            states = [getattr(value, s) for s in value._defaults]
            bad = [s for s in states if isinstance(s, torch.Tensor) and s.device != DEVICE]
        else:
            bad = [value] if isinstance(value, Number) or value.device != DEVICE else []
        if bad:
            events.append(f"self.log({name!r}) of a host value {type(value).__name__} at {metaplus_frames()}")

    return log


def conv4():
    return Conv4(input_shape=[1, 16, 16], output_dim=3, filters=4)


def mlp():
    return MLP(input_shape=[1], output_dim=1, hidden=[8, 8])


STEPS = dict(inner_steps=2, test_inner_steps=2)
LEARNERS = {
    "maml": lambda engine: MAML(conv4(), "classification", engine=engine, **STEPS),
    "fomaml": lambda engine: MAML(conv4(), "classification", engine=engine, first_order=True, **STEPS),
    "mamlpp": lambda engine: MAML(
        conv4(),
        "classification",
        engine=engine,
        msl=True,
        da=True,
        da_epochs=0,
        bnrs=True,
        bnwb=True,
        lslr=True,
        ca=True,
        min_meta_lr=1e-4,
        **STEPS,
    ),
    "maml_regression": lambda engine: MAML(mlp(), "regression", engine=engine, **STEPS),
    "anil": lambda engine: ANIL(conv4(), "classification", engine=engine, **STEPS),
    "metasgd": lambda engine: MetaSGD(mlp(), "regression", engine=engine, **STEPS),
    "reptile": lambda engine: Reptile(conv4(), "classification", engine=engine, inner_optimizer="adam", **STEPS),
    "mtnet": lambda engine: MTNet(conv4(), "classification", engine=engine, **STEPS),
    "tnet": lambda engine: MTNet(conv4(), "classification", engine=engine, use_M=False, **STEPS),
    "pretrain": lambda engine: Pretrain(conv4(), "classification", engine=engine, test_inner_steps=2),
}
CASES = [
    (name, engine)
    for name in LEARNERS
    for engine in ("l2l", "batched")
    if engine == "l2l" or name not in ("reptile", "mtnet", "tnet", "pretrain")
]  # the others refuse batched


def host_batch(regression: bool, tasks: int = 2) -> TaskBatch:
    """A batch as the data loader yields it, on the host (Lightning then moves it to the device)."""
    if regression:
        rand = lambda n: torch.randn(tasks, n, 1)
        return TaskBatch(rand(5), rand(5), rand(5), rand(5), torch.arange(tasks))
    labels = torch.arange(3).repeat_interleave(2).repeat(tasks, 1)
    images = lambda: torch.randn(tasks, 6, 1, 16, 16)
    return TaskBatch(
        images(),
        labels,
        images(),
        labels.clone(),
        torch.arange(tasks),
        support_classes=labels.clone(),
        query_classes=labels.clone(),
    )


def transferred(learner, batch: TaskBatch) -> TaskBatch:
    """Lightning's batch transfer: ``on_before_batch_transfer`` on the host, then the copy (the data
    path's, not the step's: not recorded)."""
    batch = learner.on_before_batch_transfer(batch, 0)
    return TaskBatch(**{name: None if t is None else t.to(DEVICE) for name, t in vars(batch).items()})


def on_device(name: str, engine: str, events: list[str], traffic: HostTraffic):
    """The learner on the device with a real (idle) Trainer for epochs and schedulers, Lightning's
    optimizer plumbing replaced by the plain calls it makes (backward, step)."""
    torch.manual_seed(0)
    learner = LEARNERS[name](engine)
    if name == "pretrain":
        learner.build_pretrain_head(6)
    learner = learner.to(DEVICE)
    trainer = quiet_trainer(max_epochs=3)
    learner.trainer = trainer
    optimizer = learner.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    step = optimizer.step

    def step_outside_recording(*args, **kwargs):  # allowlisted: torch.optim's host-side step counters
        with paused(traffic):
            return step(*args, **kwargs)

    optimizer.step = step_outside_recording
    learner.optimizers = lambda: optimizer
    learner.manual_backward = lambda loss: loss.backward()
    learner.gradient_sync = lambda last: nullcontext()
    learner.log = check_logged(events)
    return learner


def allowed(name: str, section: str, events: list[tuple[str, str, str]]) -> bool:
    """The ALLOWLIST of the module docstring: MT-net's mask noise, drawn on the host (CPU tensors)
    and moved to the device in one copy per batch (``batch_start``) or per ``adapt_to`` call."""
    if name != "mtnet" or section not in ("batch_start", "adapt_to"):
        return not events
    copies = [e for e in events if e[1].startswith("copy")]
    return len(copies) <= 1 and all(e[1] in ("CPU tensor made", "copy cpu->meta") for e in events)


@pytest.mark.parametrize("name,engine", CASES)
def test_hot_loop_stays_on_the_device(name, engine):
    events: list[str] = []
    traffic = HostTraffic()
    learner = on_device(name, engine, events, traffic)
    regression = learner.task_type == "regression"
    learner.on_train_epoch_start()  # once per epoch: not recorded
    events.clear()
    sections = []

    def hook(section: str, call, *args):
        start = len(traffic.events)
        with traffic.inside(section):
            out = call(*args)
        sections.append((section, traffic.events[start:]))
        return out

    with traffic:
        for batch_idx in range(2):
            batch = transferred(learner, host_batch(regression))
            hook("batch_start", learner.on_train_batch_start, batch, batch_idx)
            hook("step", learner.training_step, batch, batch_idx)
            hook("batch_end", learner.on_train_batch_end, None, batch, batch_idx)
        learner.eval()
        for stage in ("validation", "test"):
            batch = transferred(learner, host_batch(regression))
            hook("batch_start", getattr(learner, f"on_{stage}_batch_start"), batch, 0)
            hook("step", getattr(learner, f"{stage}_step"), batch, 0)
        if learner.supports_checkpoint_ensemble():  # what each ensemble member does per episode
            hook("step", learner.adapted_prediction, batch[0], learner.test_inner_steps)
        adapted = hook("adapt_to", learner.adapt_to, batch.support_x[0], batch.support_y[0])
        hook("step", adapted.predict, batch.query_x[0])
        if not regression:
            hook("step", adapted.predict_proba, batch.query_x[0])
    found = [e[2] for section, recorded in sections if not allowed(name, section, recorded) for e in recorded]
    found += events
    assert not found, f"{len(found)} host round-trips in {name}/{engine}:\n" + "\n".join(found)


def test_a_nonfinite_loss_on_an_accelerator_is_caught_at_the_next_read():
    """Off the CPU the finiteness check records on the device instead of reading the loss each step;
    the recorded step is read at the logging interval and at epoch end, and stops the run there."""
    from metaplus.algorithms import NonFiniteLossError

    learner = MAML(mlp(), "regression")
    learner.check_finite(torch.tensor(1.0), defer=True)
    learner.raise_if_nonfinite()  # finite so far: nothing to say
    learner.check_finite(torch.tensor(float("nan")), defer=True)  # recorded, not read
    learner.check_finite(torch.tensor(2.0), defer=True)  # a later finite loss does not clear it
    with pytest.raises(NonFiniteLossError, match="step 0: training diverged.*inner_lr"):
        learner.raise_if_nonfinite()
    with pytest.raises(NonFiniteLossError, match="inner_lr"):  # on the CPU: at once, as before
        learner.check_finite(torch.tensor(float("inf")))
