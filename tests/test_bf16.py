"""trainer.precision=bf16-mixed with second-order MAML on CPU.

Under manual optimisation Lightning wraps ``training_step`` in ``torch.autocast(cpu, bfloat16)``, so
the inner loop (forward passes, ``autograd.grad(create_graph=True)``) runs under autocast too; the
parameters and their gradients stay float32. This CPU has no native bf16 (AVX2 only): tiny models.
"""
import torch

from metaplus.testing import QUICK
from metaplus.algorithms import MAML
from metaplus.data.episodes import Task
from metaplus.nn import MLP

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
    learner = MAML(MLP(input_shape=[1], output_dim=1, hidden=[40, 40]), "regression", inner_steps=2,
                   inner_lr=0.01, first_order=first_order)
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
    parts = build(make_config([*QUICK, "trainer.precision=bf16-mixed", "trainer.accelerator=cpu",
                               "algo.inner_steps=2", "test=false"]))
    learner, trainer = parts["learner"], parts["trainer"]
    before = {n: p.detach().clone() for n, p in learner.named_parameters()}
    trainer.fit(learner, datamodule=parts["datamodule"])
    assert trainer.global_step == 3 and not learner.first_order
    assert torch.bfloat16 in dtypes
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(not torch.equal(before[n], p.detach()) for n, p in learner.named_parameters())
