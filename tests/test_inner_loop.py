"""The inner loop and the MAML meta-gradient against hand computations on a linear least-squares model.

For f(x) = X w and L(w) = mean((X w - y)^2): grad L = A w - b with A = 2/n X^T X, b = 2/n X^T y.
After k inner steps w_k = w_{k-1} - alpha (A_s w_{k-1} - b_s), the exact (second-order) meta-gradient of
L_q(w_k) is (I - alpha A_s)^k (A_q w_k - b_q); the first-order one drops the (I - alpha A_s)^k factor.
"""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaplus.algorithms import MAML
from metaplus.data.episodes import Task
from metaplus.inner import CloneAdapt, sgd
from metaplus.testing import TinyLinear, quadratic_terms


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(3)
    dim = 4
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    task = Task(rand(6, dim), rand(6, 1), rand(9, dim), rand(9, 1))
    model = TinyLinear(dim).double()
    with torch.no_grad():
        model.head.weight.copy_(rand(1, dim))
    return model, task


def test_one_inner_step_is_a_hand_computed_gradient_step(problem):
    model, task = problem
    alpha = 0.1
    w = model.head.weight.detach().T.clone()
    a_s, b_s = quadratic_terms(task.support_x, task.support_y)
    expected = w - alpha * (a_s @ w - b_s)
    adapted = CloneAdapt().adapt(
        model,
        task.support_x,
        task.support_y,
        loss_fn=F.mse_loss,
        steps=1,
        adapted={"head.weight"},
        rule=sgd(alpha),
        first_order=False,
    )
    torch.testing.assert_close(adapted.head.weight.T, expected)
    # the original model is untouched, the clone stays differentiable w.r.t. it
    torch.testing.assert_close(model.head.weight.T, w)
    assert adapted.head.weight.grad_fn is not None


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("first_order", [False, True])
def test_maml_meta_gradient_matches_analytic(problem, steps, first_order):
    model, task = problem
    alpha = 0.05
    learner = MAML(model, task_type="regression", inner_steps=steps, inner_lr=alpha, first_order=first_order)
    loss, _ = learner.task_loss(task)
    loss.backward()

    w = model.head.weight.detach().T.clone()
    a_s, b_s = quadratic_terms(task.support_x, task.support_y)
    a_q, b_q = quadratic_terms(task.query_x, task.query_y)
    for _ in range(steps):
        w = w - alpha * (a_s @ w - b_s)
    query_grad = a_q @ w - b_q
    jacobian = torch.linalg.matrix_power(torch.eye(w.shape[0], dtype=w.dtype) - alpha * a_s, steps)
    expected = query_grad if first_order else jacobian @ query_grad
    torch.testing.assert_close(model.head.weight.grad.T, expected)
    # second and first order really differ on this problem, so the test can tell them apart
    assert not torch.allclose(jacobian @ query_grad, query_grad, atol=1e-6)


def test_only_adapted_parameters_move(problem):
    model, task = problem
    model.extra = nn.Linear(1, 1)  # a parameter the loss never sees and the rule never names
    adapted = CloneAdapt().adapt(
        model,
        task.support_x,
        task.support_y,
        loss_fn=F.mse_loss,
        steps=2,
        adapted=set(),
        rule=sgd(0.1),
        first_order=True,
    )
    torch.testing.assert_close(adapted.head.weight, model.head.weight)
