"""algo.checkpoint_steps: the inner loop's activations are recomputed in the meta-backward instead of
kept (metaplus.inner.checkpointed). The meta-gradient, the losses and the BN running statistics must be
those of the default engine, for every switch that touches the inner loop; and less must be kept."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from metaplus.algorithms import MAML
from metaplus.config import ConfigError, instantiate_group
from metaplus.data.episodes import Task
from metaplus.inner import CheckpointedAdapt, CloneAdapt
from metaplus.nn import Conv4, ResNet12
from metaplus.testing import QUICK

MAMLPP = dict(msl=True, bnrs=True, bnwb=True, lslr=True)  # every MAML++ switch the inner loop sees


def backbone(kind: str) -> nn.Module:
    if kind == "conv4":
        return Conv4(input_shape=[1, 16, 16], output_dim=3, filters=3)
    # DropBlock on: the recomputation must replay the random masks of the first pass
    return ResNet12(input_shape=[1, 16, 16], output_dim=3, widths=[2, 2, 3, 3], dropblock_rate=0.2, dropblock_size=2)


def learner(kind: str, checkpoint_steps: bool, **switches) -> MAML:
    torch.manual_seed(0)
    model = MAML(
        backbone(kind),
        "classification",
        inner_steps=3,
        inner_lr=0.1,
        checkpoint_steps=checkpoint_steps,
        **switches,
    ).double()
    return model.train()


def task(ways: int = 3, shots: int = 1, queries: int = 4) -> Task:
    g = torch.Generator().manual_seed(1)
    support_y, query_y = torch.arange(ways).repeat(shots), torch.arange(ways).repeat(queries)
    sx = torch.randn(len(support_y), 1, 16, 16, generator=g, dtype=torch.float64)
    qx = torch.randn(len(query_y), 1, 16, 16, generator=g, dtype=torch.float64)
    return Task(sx, support_y, qx, query_y)


def meta_step(model: MAML) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One task's outer loss, the meta-gradient of every parameter and the buffers after it."""
    torch.manual_seed(2)  # DropBlock's masks
    loss, _ = model.task_loss(task())
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return loss.detach(), grads, {n: b.clone() for n, b in model.named_buffers()}


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("switches", [{}, MAMLPP], ids=["maml", "mamlpp"])
@pytest.mark.parametrize("kind", ["conv4", "resnet12"])
def test_meta_gradient_and_running_statistics_equal_the_default_engines(kind, switches, first_order):
    plain = learner(kind, False, first_order=first_order, **switches)
    recomputed = learner(kind, True, first_order=first_order, **switches)
    assert isinstance(recomputed.inner, CheckpointedAdapt) and type(plain.inner) is CloneAdapt
    initial = {n: b.clone() for n, b in plain.named_buffers()}
    loss, grads, buffers = meta_step(plain)
    loss_ck, grads_ck, buffers_ck = meta_step(recomputed)
    torch.testing.assert_close(loss_ck, loss, rtol=1e-12, atol=0)
    assert grads.keys() == grads_ck.keys()
    for name, grad in grads.items():
        assert grad is not None and grads_ck[name] is not None, name
        assert grad.abs().max() > 0, f"{name}: a zero meta-gradient compares nothing"
        torch.testing.assert_close(grads_ck[name], grad, rtol=1e-10, atol=1e-13, msg=name)
    if switches:  # BNRS: the running statistics moved, once (the recomputation did not move them again)
        stats = [n for n in buffers if n.endswith(("running_mean", "running_var"))]
        assert stats and all(not torch.equal(buffers[n], initial[n]) for n in stats)
    for name, value in buffers.items():
        torch.testing.assert_close(buffers_ck[name], value, rtol=0, atol=0, msg=name)


def test_recomputation_replays_autocast():
    """bf16 autocast: the recomputed passes run in bf16 as the first ones did, even where the backward
    runs outside the autocast block (as on a GPU's backward thread): the same meta-gradient, bit for bit."""

    def meta_gradient(checkpoint_steps: bool) -> dict[str, torch.Tensor]:
        model = learner("conv4", checkpoint_steps, **MAMLPP).float()
        t = task()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = model.task_loss(Task(t.support_x.float(), t.support_y, t.query_x.float(), t.query_y))
        loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}

    plain, recomputed = meta_gradient(False), meta_gradient(True)
    for name, grad in plain.items():
        assert torch.equal(recomputed[name], grad), name


def saved_bytes(model: MAML) -> int:
    """Bytes of the distinct storages autograd keeps for the meta-backward of one task (outside the
    checkpointed regions, which keep only their inputs)."""
    storages = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = model.task_loss(task(queries=10))
    loss.backward()
    return sum(storages.values())


def test_checkpointing_keeps_a_fraction_of_the_activations():
    kept, kept_ck = saved_bytes(learner("conv4", False, **MAMLPP)), saved_bytes(learner("conv4", True, **MAMLPP))
    assert kept_ck < kept / 4, (kept_ck, kept)


def test_adapted_model_is_a_module_and_evaluation_is_unchanged():
    plain, recomputed = learner("conv4", False, **MAMLPP), learner("conv4", True, **MAMLPP)
    adapted = dict(plain.adapt(task(), 2, first_order=False).named_parameters())
    adapted_ck = dict(recomputed.adapt(task(), 2, first_order=False).named_parameters())
    assert adapted.keys() == adapted_ck.keys()
    for name, value in adapted.items():
        torch.testing.assert_close(adapted_ck[name], value, rtol=1e-12, atol=0, msg=name)
    plain.eval(), recomputed.eval()
    for a, b in zip(plain.evaluate_task(task(), 3), recomputed.evaluate_task(task(), 3)):
        assert torch.equal(a, b)


def test_adapted_model_is_freed_without_the_garbage_collector():
    """Each step's model must not be a reference cycle: it holds the step's parameters (and through
    them the task's graph), which must go as soon as the backward is done, not at the next collection."""
    model = learner("conv4", True, **MAMLPP)
    gc.disable()
    try:
        adapted = model.adapt(task(), 2, first_order=False)
        adapted_ref, parameter_ref = weakref.ref(adapted), weakref.ref(adapted.head.weight)
        adapted(task().query_x, step=1).sum().backward()
        del adapted
        assert adapted_ref() is None and parameter_ref() is None
    finally:
        gc.enable()


def test_checkpoint_steps_refuses_what_it_cannot_do():
    with pytest.raises(ConfigError, match=r"checkpoint_steps.*engine=batched.*algo.engine=l2l"):
        MAML(backbone("conv4"), "classification", engine="batched", checkpoint_steps=True)
    with pytest.raises(ConfigError, match=r"checkpoint_steps.*'yes' is invalid: must be true or false"):
        MAML(backbone("conv4"), "classification", checkpoint_steps="yes")
    # Learners whose inner loop is not MAML's do not take the key: named, with the allowed keys
    for target in ("Reptile", "Pretrain"):
        node = OmegaConf.create({"_target_": f"metaplus.algorithms.{target}", "checkpoint_steps": True})
        with pytest.raises(ConfigError, match=r"algo.checkpoint_steps: unknown key"):
            instantiate_group(node, "algo", backbone=backbone("conv4"), task_type="classification")


def test_checkpoint_steps_trains_through_the_real_trainer(make_config):
    from metaplus.run import build

    cfg = make_config([*QUICK, "algo=mamlpp", "algo.da=false", "algo.inner_steps=2", "algo.checkpoint_steps=true"])
    parts = build(cfg)
    assert isinstance(parts["learner"].inner, CheckpointedAdapt)
    before = {n: p.detach().clone() for n, p in parts["learner"].named_parameters()}
    parts["trainer"].fit(parts["learner"], datamodule=parts["datamodule"])
    assert parts["trainer"].global_step == 3
    after = dict(parts["learner"].named_parameters())
    assert all(not torch.equal(before[n], after[n].detach()) for n in before), "every parameter was updated"
