"""Meta-SGD: learned per-entry inner rates, their meta-gradient against a hand derivation.

Linear least squares f(x) = X w, L(w) = mean((X w - y)^2), grad L = A w - b (A = 2/n X^T X, b = 2/n X^T y).
One inner step with rates a (same shape as w): w' = w - a * g, g = A_s w - b_s. With q = A_q w' - b_q:
  dL_q/da = -q * g                        (w' is linear in a, whatever the derivative order)
  dL_q/dw = (I - A_s diag(a)) q            (second order);  q  (first order).
"""

import pytest
import torch

from metaplus.algorithms import MetaSGD
from metaplus.data.episodes import Task
from metaplus.testing import (
    QUICK,
    QUICK_OMNIGLOT,
    TinyLinear,
    needs_omniglot,
    quadratic_terms,
    trained_vs_untrained,
)


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(11)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    model = TinyLinear(4).double()
    with torch.no_grad():
        model.head.weight.copy_(rand(1, 4))
    learner = MetaSGD(model, "regression", inner_steps=1, inner_lr=0.05)
    with torch.no_grad():  # distinct rates per entry, so a mixed-up index or transpose shows
        learner.inner_lrs["head__weight"].copy_(0.02 + 0.1 * torch.rand(1, 4, generator=g, dtype=torch.float64))
    return learner, Task(rand(6, 4), rand(6, 1), rand(9, 4), rand(9, 1))


def test_one_rate_per_entry_of_every_adapted_parameter_initialised_to_inner_lr():
    from metaplus.nn import MLP

    learner = MetaSGD(MLP(hidden=[8]), "regression", inner_lr=0.03)
    shapes = {n: p.shape for n, p in learner.backbone.named_parameters()}
    assert {k: v.shape for k, v in learner.inner_lrs.items()} == {n.replace(".", "__"): s for n, s in shapes.items()}
    assert all(torch.all(v == 0.03) for v in learner.inner_lrs.values())
    # the outer optimizer sees the rates
    optimizer = learner.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert all(id(v) in optimized for v in learner.inner_lrs.values())


@pytest.mark.parametrize("first_order", [False, True])
def test_rate_and_initialisation_gradients_match_hand_derivation(problem, first_order):
    learner, task = problem
    learner.first_order = first_order
    loss, _ = learner.task_loss(task)
    loss.backward()

    w = learner.backbone.head.weight.detach().T.clone()  # (dim, 1)
    a = learner.inner_lrs["head__weight"].detach().T.clone()
    a_s, b_s = quadratic_terms(task.support_x, task.support_y)
    a_q, b_q = quadratic_terms(task.query_x, task.query_y)
    g = a_s @ w - b_s
    q = a_q @ (w - a * g) - b_q
    torch.testing.assert_close(learner.inner_lrs["head__weight"].grad.T, -q * g)
    expected_w = q if first_order else (torch.eye(4, dtype=w.dtype) - a_s @ torch.diag(a.flatten())) @ q
    torch.testing.assert_close(learner.backbone.head.weight.grad.T, expected_w)


def test_adaptation_uses_the_learned_rates(problem):
    learner, task = problem
    adapted = learner.adapt(task, steps=1, first_order=True)
    w = learner.backbone.head.weight.detach().T
    a = learner.inner_lrs["head__weight"].detach().T
    a_s, b_s = quadratic_terms(task.support_x, task.support_y)
    torch.testing.assert_close(adapted.head.weight.detach().T, w - a * (a_s @ w - b_s))


def test_metasgd_learns_rates_and_improves_adaptation_on_sinusoid(make_config, tmp_path):
    overrides = [
        *QUICK,
        "algo=metasgd",
        "trainer.max_epochs=2",
        "data.batches_per_epoch=100",
        "data.meta_batch_size=10",
        "data.val_episodes=20",
        "data.test_episodes=100",
        "algo.meta_lr=0.003",
    ]
    trained, untrained = trained_vs_untrained(make_config, tmp_path, overrides, "test/mse")
    print(f"metasgd sinusoid test/mse after 1 step: trained {trained['test/mse']:.3f}, untrained {untrained:.3f}")
    assert trained["test/mse"] < 0.9 * untrained, (trained["test/mse"], untrained)

    # the rates were meta-learned and are in the checkpoint that was evaluated
    state = torch.load(trained["best_checkpoint"], map_location="cpu", weights_only=False)["state_dict"]
    rates = state["inner_lrs.head__weight"]
    assert rates.shape == (1, 40)  # head.weight of the 1-40-40-1 MLP
    assert not torch.allclose(rates, torch.full_like(rates, 0.01)), "the rates should have moved from inner_lr"


@needs_omniglot
def test_metasgd_improves_adaptation_on_omniglot_5way_1shot(make_config, tmp_path):
    overrides = [
        *QUICK_OMNIGLOT,
        "algo=metasgd",
        "algo.inner_lr=0.1",
        "algo.test_inner_steps=1",
    ]
    trained, untrained = trained_vs_untrained(make_config, tmp_path, overrides, "test/acc")
    print(f"metasgd omniglot 5w1s test/acc: trained {trained['test/acc']:.3f}, untrained {untrained:.3f}")
    assert trained["test/acc"] > untrained + 0.05, (trained["test/acc"], untrained)
