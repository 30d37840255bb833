"""The inner loop on learn2learn's building blocks: ``clone_module`` then ``update_module`` steps.

The engine knows nothing of algorithms. An algorithm hands it
- ``adapted``: the names of the parameters the inner loop may change (MAML all, ANIL the head, ...),
- ``rule(name, param, grad, step) -> delta``: how a gradient becomes an update (plain SGD, learned
  per-step rates, Meta-SGD's per-parameter rates, MT-net masks, ...),
- ``first_order``: whether the inner gradients stay in the graph (second-order MAML) or not.
Swapping the engine (e.g. for a vectorised torch.func one) means providing the same ``adapt``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import learn2learn as l2l
import torch
from torch import Tensor, nn

UpdateRule = Callable[[str, Tensor, Tensor, int], Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
StepHook = Callable[[nn.Module, int], None]


def sgd(lr: float) -> UpdateRule:
    """Plain gradient descent with one fixed inner learning rate."""
    return lambda name, param, grad, step: -lr * grad


def gradient_step(
    learner: nn.Module, loss: Tensor, adapted: Collection[str], rule: UpdateRule, step: int, first_order: bool
) -> None:
    """One differentiable update of ``learner``'s ``adapted`` parameters, in place (learn2learn style)."""
    named = list(learner.named_parameters())
    targets = [p for n, p in named if n in adapted]
    if not targets:  # nothing to adapt (e.g. zero-shot evaluation of a frozen model)
        return
    # create_graph keeps d(update)/d(theta) for second-order meta-gradients; first order drops it.
    grads = iter(torch.autograd.grad(loss, targets, create_graph=not first_order, allow_unused=True))
    updates = []
    for name, param in named:
        grad = next(grads) if name in adapted else None
        updates.append(None if grad is None else rule(name, param, grad, step))
    l2l.update_module(learner, updates=updates)


class CloneAdapt:
    """Adapts a learn2learn clone of the backbone; the original backbone is never modified."""

    def adapt(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        loss_fn: LossFn,
        steps: int,
        adapted: Collection[str],
        rule: UpdateRule,
        first_order: bool,
        on_step: StepHook | None = None,
    ) -> nn.Module:
        """Take ``steps`` steps on the support set (x, y) and return the adapted clone.

        ``on_step(learner, k)`` runs after step k (0-based), e.g. to score the query set at every
        step for MAML++'s multi-step loss. Forward passes receive ``step=k`` for per-step layers.
        """
        learner = l2l.clone_module(model)
        for step in range(steps):
            loss = loss_fn(learner(x, step=step), y)
            gradient_step(learner, loss, adapted, rule, step, first_order)
            if on_step is not None:
                on_step(learner, step)
        return learner
