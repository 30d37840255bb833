"""ANIL: only the head adapts; the body's meta-gradient is the query loss through the head-only update."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaplus.algorithms import ANIL, MAML
from metaplus.data.episodes import Task
from metaplus.testing import QUICK, QUICK_OMNIGLOT, needs_omniglot, trained_vs_untrained


class TinyNet(nn.Module):
    """tanh body + linear head: smooth, so second-order terms are non-zero."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.head = nn.Linear(4, 1)

    def forward(self, x, step=0):
        return self.head(self.body(x))


@pytest.fixture
def problem():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(5)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    return TinyNet().double(), Task(rand(6, 3), rand(6, 1), rand(8, 3), rand(8, 1))


def reference_body_grads(model, task, alpha, steps, first_order):
    """Autograd of the query loss through `steps` SGD steps on the head alone, written out by hand."""
    w1, b1 = model.body[0].weight, model.body[0].bias
    features = lambda x: torch.tanh(x @ w1.T + b1)
    w, b = model.head.weight, model.head.bias
    for _ in range(steps):
        support_loss = F.mse_loss(features(task.support_x) @ w.T + b, task.support_y)
        gw, gb = torch.autograd.grad(support_loss, (w, b), create_graph=not first_order)
        w, b = w - alpha * gw, b - alpha * gb
    query_loss = F.mse_loss(features(task.query_x) @ w.T + b, task.query_y)
    return torch.autograd.grad(query_loss, (w1, b1))


def test_inner_loop_moves_the_head_and_leaves_the_body(problem):
    model, task = problem
    learner = ANIL(model, task_type="regression", inner_steps=2, inner_lr=0.1)
    assert learner.adapted_names() == {"head.weight", "head.bias"}
    adapted = learner.adapt(task, steps=2, first_order=False)
    for name, param in adapted.named_parameters():
        original = model.get_parameter(name)
        if name.startswith("body."):
            torch.testing.assert_close(param, original, rtol=0, atol=0)
        else:
            assert not torch.allclose(param, original), f"{name} should have been adapted"


@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("steps", [1, 2])
def test_body_gradient_comes_only_through_the_query_loss(problem, first_order, steps):
    model, task = problem
    alpha = 0.3
    loss, _ = ANIL(model, "regression", inner_steps=steps, inner_lr=alpha, first_order=first_order).task_loss(task)
    loss.backward()
    expected = reference_body_grads(model, task, alpha, steps, first_order)
    torch.testing.assert_close(model.body[0].weight.grad, expected[0])
    torch.testing.assert_close(model.body[0].bias.grad, expected[1])

    # MAML adapts the body too, so its body gradient differs: the test can tell ANIL from MAML.
    model.zero_grad()
    maml_loss, _ = MAML(model, "regression", inner_steps=steps, inner_lr=alpha, first_order=first_order).task_loss(task)
    maml_loss.backward()
    assert not torch.allclose(model.body[0].weight.grad, expected[0], atol=1e-8)


def test_anil_meta_training_improves_adaptation_on_sinusoid(make_config, tmp_path):
    overrides = [
        *QUICK,
        "algo=anil",
        "trainer.max_epochs=2",
        "data.batches_per_epoch=100",
        "data.meta_batch_size=10",
        "data.val_episodes=20",
        "data.test_episodes=100",
        "algo.test_inner_steps=5",
        "algo.meta_lr=0.003",
    ]
    trained, untrained = trained_vs_untrained(make_config, tmp_path, overrides, "test/mse")
    print(f"anil sinusoid test/mse after 5 steps: trained {trained['test/mse']:.3f}, untrained {untrained:.3f}")
    assert trained["test/mse"] < 0.9 * untrained, (trained["test/mse"], untrained)


@needs_omniglot
def test_anil_improves_adaptation_on_omniglot_5way_1shot(make_config, tmp_path):
    overrides = [
        *QUICK_OMNIGLOT,
        "algo=anil",
        "algo.inner_lr=0.4",
        "algo.test_inner_steps=3",
    ]
    trained, untrained = trained_vs_untrained(make_config, tmp_path, overrides, "test/acc")
    print(f"anil omniglot 5w1s test/acc: trained {trained['test/acc']:.3f}, untrained {untrained:.3f}")
    assert trained["test/acc"] > untrained + 0.05, (trained["test/acc"], untrained)
