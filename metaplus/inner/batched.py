"""The inner loop as one batched computation over the tasks of a meta-batch (torch.func).

``torch.func.functional_call`` runs the backbone with substituted parameters, ``torch.func.grad``
takes each inner gradient, and ``torch.vmap`` maps the whole adaptation (and the query loss) over
the tasks, so a meta-batch of Conv-4 tasks becomes a few large kernels instead of many small ones:
on GPUs the small ones are launch-bound. ``chunk_size`` tasks go through one vmapped call; the
learner back-propagates each chunk before the next, so memory grows with the chunk, not the batch.

Like :class:`~metaplus.inner.clone_adapt.CloneAdapt`, the engine knows nothing of algorithms: it
receives the ``adapted`` names, the update ``rule`` and ``first_order``; multi-step losses arrive as
``step_weights`` (one weight per inner step for the query loss after that step). Batch norm is
computed per task with explicit statistics (:func:`metaplus.nn.batchnorm.explicit_batch_statistics`):
the native kernel under vmap gave wrong second-order gradients, and running statistics cannot be
updated in place from inside vmap (so the batched engine keeps none up to date while training).

Validation and test go through the same vmapped adaptation (``scored_queries``: first order, the
query set scored before adaptation and after every or the last step), with per-episode results
equal to the default engine's one-task-at-a-time evaluation; ``adapt_to`` and the checkpoint
ensemble adapt one task through the inherited ``adapt`` (learn2learn).
"""

from __future__ import annotations

from collections.abc import Collection

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from metaplus.errors import ConfigError, check
from metaplus.inner.clone_adapt import CloneAdapt, LossFn, UpdateRule
from metaplus.nn.batchnorm import explicit_batch_statistics, per_step_batchnorms


class BatchedAdapt(CloneAdapt):
    """Adapts ``chunk_size`` tasks per vmapped call (``None``: the whole meta-batch at once)."""

    batched = True

    def __init__(self, chunk_size: int | None = None):
        check(
            "chunk_size",
            chunk_size,
            chunk_size is None
            or (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1),
            "null (the whole meta-batch in one call) or an integer >= 1",
        )
        self.chunk_size = chunk_size

    def chunks(self, tasks: int) -> list[slice]:
        """The slices of a meta-batch of ``tasks`` tasks that go through one vmapped call each."""
        size = self.chunk_size or tasks
        return [slice(start, min(start + size, tasks)) for start in range(0, tasks, size)]

    def query_losses(
        self,
        model: nn.Module,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        *,
        loss_fn: LossFn,
        steps: int,
        adapted: Collection[str],
        rule: UpdateRule,
        first_order: bool,
        step_weights: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Outer losses ``(T,)`` and final query predictions ``(T, Q, ...)`` of T stacked tasks.

        Each task adapts ``steps`` steps on its support set from the model's parameters; its outer
        loss is the query loss after the last step, or with ``step_weights`` the weighted sum of
        the query losses after every step. Gradients reach every parameter of ``model`` (and of
        ``rule``) through ordinary autograd: call ``backward`` on (a function of) the losses.
        """
        refuse_running_statistics(model)
        scored = list(range(1, steps + 1)) if step_weights is not None else [steps]
        losses, predictions = self.scored_queries(
            model,
            support_x,
            support_y,
            query_x,
            query_y,
            loss_fn=loss_fn,
            steps=steps,
            adapted=adapted,
            rule=rule,
            first_order=first_order,
            scored=scored,
        )
        if step_weights is None:
            return losses[:, -1], predictions[:, -1]
        return (step_weights.to(losses) * losses).sum(dim=1), predictions[:, -1]

    def scored_queries(
        self,
        model: nn.Module,
        support_x: Tensor,
        support_y: Tensor,
        query_x: Tensor,
        query_y: Tensor,
        *,
        loss_fn: LossFn,
        steps: int,
        adapted: Collection[str],
        rule: UpdateRule,
        first_order: bool,
        scored: list[int],
    ) -> tuple[Tensor, Tensor]:
        """Query losses ``(T, S)`` and predictions ``(T, S, Q, ...)`` of T stacked tasks after each
        number of inner steps in ``scored`` (0 = before adaptation), as the default engine's
        ``on_step`` hook scores them: the query pass after ``k`` steps uses step ``max(k - 1, 0)``."""
        params = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        fixed = {n: p for n, p in params.items() if n not in adapted}
        start = {n: p for n, p in params.items() if n in adapted}
        device_type = query_x.device.type
        autocast_on = torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)

        def forward(current: dict[str, Tensor], x: Tensor, step: int) -> Tensor:
            return functional_call(model, ({**fixed, **current}, buffers), (x,), {"step": step})

        def query_forward(current: dict[str, Tensor], x: Tensor, step: int) -> Tensor:
            if not autocast_on:
                return forward(current, x, step)
            return autocast_forward(lambda: forward(current, x, step), x.device)

        def support_loss(current: dict[str, Tensor], x: Tensor, y: Tensor, step: int) -> Tensor:
            return loss_fn(forward(current, x, step), y)

        def one_task(sx: Tensor, sy: Tensor, qx: Tensor, qy: Tensor) -> tuple[Tensor, Tensor]:
            current, losses, predictions = start, [], []

            def score(after: int) -> None:
                for _ in range(scored.count(after)):
                    predictions.append(query_forward(current, qx, max(after - 1, 0)))
                    losses.append(loss_fn(predictions[-1], qy))

            score(0)
            for step in range(steps):
                grads = grad(support_loss)(current, sx, sy, step) if current else {}
                current = {
                    n: p + rule(n, p, grads[n].detach() if first_order else grads[n], step) for n, p in current.items()
                }
                score(step + 1)
            return torch.stack(losses), torch.stack(predictions)

        # randomness="different": random layers (ResNet-12's DropBlock) draw independently for each
        # task, as they do when the default engine adapts one task after another.
        with explicit_batch_statistics():
            return vmap(one_task, randomness="different")(support_x, support_y, query_x, query_y)


def autocast_forward(forward, device: torch.device):
    """``forward()`` under the caller's autocast, from inside ``vmap``.

    torch.vmap's interpreter skips the autocast dispatch keys while torch.func.grad's keeps them, so
    under ``trainer.precision=bf16-mixed`` the support passes (inside ``grad``) ran in bf16 and the
    query passes (directly under ``vmap``) in fp32, unlike the default engine, which runs both in
    bf16. Here the forward runs as the auxiliary output of a ``grad`` over a dummy scalar: the same
    ops, now autocast, and still differentiable for the meta-gradient; the extra backward is that of
    ``0 * dummy``."""
    dummy = torch.zeros((), device=device)  # made on the device: no host tensor in the step

    def with_dummy(d: Tensor) -> tuple[Tensor, Tensor]:
        return d * 0, forward()

    return grad(with_dummy, has_aux=True)(dummy)[1]


def refuse_running_statistics(model: nn.Module) -> None:
    """Running statistics that evaluation normalises with cannot be kept under vmap: refuse early."""
    tracked = [
        name for name, layer in per_step_batchnorms(model).items() if layer.training and layer.stats == "running"
    ]
    if tracked:
        raise ConfigError(
            "algo.engine",
            f"'batched' keeps no running BN statistics, but {tracked} normalise "
            f"evaluation with them (algo.bn_stats=running): use algo.bn_stats=batch "
            f"or algo.engine=l2l",
        )
