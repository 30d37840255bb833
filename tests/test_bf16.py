"""trainer.precision=bf16-mixed with second-order MAML on CPU.

Under manual optimisation Lightning wraps ``training_step`` in ``torch.autocast(cpu, bfloat16)``, so
the inner loop (forward passes, ``autograd.grad(create_graph=True)``) runs under autocast too; the
parameters and their gradients stay float32. This CPU has no native bf16 (AVX2 only): tiny models.
"""

import torch

from metaplus.algorithms import MAML
from metaplus.data.episodes import Task
from metaplus.nn import MLP
from metaplus.testing import QUICK

# bf16 keeps 8 significant bits (unit roundoff 2^-8 = 0.4 %). Autocast rounds the input of every
# matmul; the meta-gradient goes through the forward, the inner backward and its backward (double
# backward) of 2 inner steps, ~10 such roundings deep, so its relative error is a few percent
# (measured 0.4-2.9 % for this MLP with 0-5 inner steps). 5 % bounds that with a margin; a wrong
# second-order term (e.g. inner gradients detached under autocast) changes it by far more (below).
RELATIVE_TOLERANCE = 0.05


def sinusoid_task(seed: int = 1) -> Task:
    g = torch.Generator().manual_seed(seed)
    x_s, x_q = torch.rand(10, 1, generator=g) * 10 - 5, torch.rand(10, 1, generator=g) * 10 - 5
    return Task(x_s, 2 * torch.sin(x_s + 1), x_q, 2 * torch.sin(x_q + 1))


def meta_gradient(bf16: bool, first_order: bool = False) -> torch.Tensor:
    torch.manual_seed(0)
    learner = MAML(
        MLP(input_shape=[1], output_dim=1, hidden=[40, 40]),
        "regression",
        inner_steps=2,
        inner_lr=0.01,
        first_order=first_order,
    )
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = learner.task_loss(sinusoid_task())
    loss.backward()
    grads = [p.grad for p in learner.parameters()]
    assert all(g is not None and g.dtype == torch.float32 for g in grads)
    return torch.cat([g.flatten() for g in grads])


def test_bf16_second_order_meta_gradient_is_fp32_within_tolerance():
    fp32, bf16 = meta_gradient(False), meta_gradient(True)
    error = ((bf16 - fp32).norm() / fp32.norm()).item()
    assert 0 < error < RELATIVE_TOLERANCE  # > 0: autocast really ran the computation in bf16
    # The second-order term matters at this tolerance: first-order MAML is further from it.
    first_order = meta_gradient(False, first_order=True)
    assert ((first_order - fp32).norm() / fp32.norm()).item() > 2 * RELATIVE_TOLERANCE


def test_bf16_mixed_trains_second_order_maml_through_the_trainer(make_config, monkeypatch):
    """The real Trainer with trainer.precision=bf16-mixed: the inner loop's predictions are bf16
    (autocast reached it), training steps, every parameter moves and the loss stays finite."""
    from metaplus.run import build

    dtypes = []
    original = MAML.loss_fn

    def recording_loss(self, prediction, target):
        dtypes.append(prediction.dtype)
        return original(self, prediction, target)

    monkeypatch.setattr(MAML, "loss_fn", recording_loss)
    parts = build(
        make_config(
            [*QUICK, "trainer.precision=bf16-mixed", "trainer.accelerator=cpu", "algo.inner_steps=2", "test=false"]
        )
    )
    learner, trainer = parts["learner"], parts["trainer"]
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    trainer.fit(learner, datamodule=parts["datamodule"])
    assert trainer.global_step == 3 and not learner.first_order
    assert torch.bfloat16 in dtypes
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(not torch.equal(before[n], p.detach()) for n, p in learner.named_parameters())


# -- Conv-4 with batch norm under bf16: both engines alike -------------------------------------
# Under bf16 autocast each engine's outer losses are within ~1 % of fp32; the two engines' per-task
# losses agree to 0.2-0.4 % (measured: Conv-4 28x28, 16 filters, 1-2 inner steps, first and second
# order). 1 % states that with a margin. The meta-gradients themselves are not compared: on this
# CPU (bf16 emulated, no native support) Conv-4 + BN gradients at initialisation are already
# 13 % from fp32 after plain backprop and ~50 % after an inner step, in both engines alike, so a
# bound on their difference would say nothing. What distinguishes the engines is the precision of
# each pass, asserted exactly: every query pass in bf16 (the batched engine ran them in fp32), and
# batch statistics accumulated in fp32 (they were accumulated in bf16 under vmap).
ENGINE_LOSS_TOLERANCE = 0.01


def prototype_batch(tasks: int = 3, ways: int = 5, shots: int = 2, queries: int = 3, seed: int = 1):
    """Images = a class prototype + noise, so the tasks are learnable (not pure noise)."""
    from metaplus.data.episodes import TaskBatch

    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(tasks, ways, 1, 1, 28, 28, generator=g)

    def draw(n: int) -> torch.Tensor:
        noise = 0.3 * torch.randn(tasks, ways, n, 1, 28, 28, generator=g)
        return (prototypes + noise).reshape(tasks, ways * n, 1, 28, 28)

    labels = lambda n: torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)
    return TaskBatch(draw(shots), labels(shots), draw(queries), labels(queries), torch.arange(tasks))


def conv4_bf16_losses(engine: str, first_order: bool) -> tuple[torch.Tensor, set]:
    """Per-task outer losses of MAML with MSL (a query pass after every inner step) on Conv-4 + BN
    under bf16 autocast, and the dtypes of every query prediction."""
    from contextlib import nullcontext

    from metaplus.nn import Conv4

    torch.manual_seed(0)
    learner = MAML(
        Conv4(input_shape=[1, 28, 28], output_dim=5, filters=16),
        "classification",
        inner_steps=2,
        inner_lr=0.1,
        msl=True,
        first_order=first_order,
        engine=engine,
    )
    learner.manual_backward = lambda loss: loss.backward()
    learner.gradient_sync = lambda last: nullcontext()
    batch, query_dtypes = prototype_batch(), set()
    loss_fn = learner.loss_fn

    def recording(prediction, target):
        if prediction.shape[-2] == batch.query_x.shape[1]:  # 15 query rows, 10 support rows
            query_dtypes.add(prediction.dtype)
        return loss_fn(prediction, target)

    learner.loss_fn = recording
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if engine == "batched":
            losses, _ = learner.accumulate_batched(batch)
        else:
            losses = [learner.accumulate_task(batch[b], 1.0 / len(batch))[0] for b in range(len(batch))]
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters() if p.grad is not None)
    return torch.stack(losses).float(), query_dtypes


import pytest  # noqa: E402


@pytest.mark.parametrize("first_order", [False, True])
def test_conv4_bn_bf16_both_engines_run_every_pass_in_bf16_and_agree(first_order):
    default, default_dtypes = conv4_bf16_losses("l2l", first_order)
    batched, batched_dtypes = conv4_bf16_losses("batched", first_order)
    assert default_dtypes == {torch.bfloat16}
    assert batched_dtypes == {torch.bfloat16}, "the vmapped query passes must run under autocast too"
    assert ((batched - default).norm() / default.norm()).item() < ENGINE_LOSS_TOLERANCE


def test_explicit_batch_statistics_are_fp32_under_bf16():
    """The batched engine's explicit BN of a bf16 map: statistics in fp32, output as native batch
    norm's (which accumulates in fp32). A map around 100.25 shows the difference: bf16's spacing
    there is 0.5, so a mean rounded to bf16 is off by ~0.25 of a unit standard deviation."""
    import torch.nn.functional as F

    from metaplus.nn import batchnorm

    g = torch.Generator().manual_seed(0)
    x = (100.25 + torch.randn(8, 3, 6, 6, generator=g)).bfloat16()
    weight, bias = torch.ones(3), torch.zeros(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explicit = batchnorm.batch_statistics_norm(x, weight, bias, 1e-5)
        native = F.batch_norm(x, None, None, weight, bias, training=True, eps=1e-5)
    assert explicit.dtype == native.dtype == torch.bfloat16
    torch.testing.assert_close(explicit.float(), native.float(), atol=0.02, rtol=0.01)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, var = batchnorm.batch_statistics(x)
    assert mean.dtype == var.dtype == torch.float32
    torch.testing.assert_close(mean.flatten(), x.float().mean(dim=(0, 2, 3)))
