"""The meta floor: one task's meta-loss as a learner defines it, written out by hand with torch.func.

bench/speed.py times it next to the learner's own training step: the same meta-gradient (derivative
order, inner steps, adapted tensors, MSL's per-step query weights) in the fewest lines torch allows,
with no learn2learn clone, no update-rule hook, no Lightning loop and no metrics. The ratio of the two
times is what the framework's machinery costs. tests/test_speed_bench.py checks that its gradient is the
learner's meta-gradient (it is only a floor if it computes the same thing).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call


def meta_floor_loss(learner, backbone: nn.Module, task, device: torch.device) -> Tensor:
    """One task's meta-loss: ``inner_steps`` plain gradient steps ``p - inner_lr * g`` on the support
    set (graph kept unless the learner trains first order), then the query loss after the last step, or
    after every step weighted by the learner's ``query_step_weights()`` (MAML++'s multi-step loss)."""
    steps, first_order = max(learner.inner_steps, 1), learner.training_first_order()
    adapted = [name for name, _ in backbone.named_parameters() if name in learner.adapted_names()]
    weights = learner.query_step_weights()  # MSL's per-step weights, or None: the last step only
    sx, sy, qx, qy = (t.to(device) for t in (task.support_x, task.support_y, task.query_x, task.query_y))
    params = dict(backbone.named_parameters())
    query_loss = 0.0
    for step in range(steps):
        loss = learner.loss_fn(functional_call(backbone, params, (sx,), {"step": step}), sy)
        grads = torch.autograd.grad(loss, [params[n] for n in adapted], create_graph=not first_order)
        params = {**params, **{n: params[n] - learner.inner_lr * g for n, g in zip(adapted, grads)}}
        if weights is not None or step == steps - 1:
            weight = 1.0 if weights is None else float(weights[step])
            query_loss = query_loss + weight * learner.loss_fn(
                functional_call(backbone, params, (qx,), {"step": step}), qy
            )
    return query_loss
