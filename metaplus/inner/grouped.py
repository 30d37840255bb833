"""Conv-4's inner loop over T tasks at once as grouped convolutions (issue 26's stretch: a measurement).

The T tasks of a meta-batch are stacked on the channel axis: task t's images (N, C, H, W) become
channels ``t*C .. t*C+C-1`` of one (N, T*C, H, W) tensor, and every 3x3 convolution is a single
``groups=T`` convolution whose T groups carry the T tasks' own (fast) weights, concatenated
(T*O, C, 3, 3). The layout makes the rest per task for free:
- batch norm with batch statistics reduces each channel over (N, H, W), i.e. over each task's own
  images (MAML's transductive BN), so the native kernel and its double backward serve as they are
  (the vmap engine has to compute the statistics explicitly);
- max-pool and the activation are per channel;
- the heads are one batched matmul, (T, N, F) x (T, F, out).
Every parameter is held per task as a (T, *shape) tensor: the adapted ones start as T views of the
initial value (``expand``, so the meta-gradient sums back over the tasks), the others (BN's affine
sets, never adapted by MAML/MAML++) stay T views throughout. One inner gradient of the sum of the T
support losses is every task's own gradient (task t's loss depends on task t's slices only).

Caveat: the tasks must have the same number of support and of query images (an episode batch does).
Only :class:`~metaplus.nn.Conv4` is supported. Like the vmap engine, it updates no running BN
statistics while training (and refuses ``bn_stats=running`` there); evaluation with running
statistics normalises with them.

:class:`GroupedAdapt` answers the vmap engine's ``scored_queries`` (so its ``query_losses`` and the
learner's ``accumulate_batched`` / ``evaluate_batched`` run it unchanged): ``algo.engine=grouped``.
bench/kernels.py's ``grouped`` subcommand measures it against the default and vmap engines
(bench/results/kernels.md section 6): on this project's CPU it pays for Omniglot-sized images (13-20 %
less CPU time with 5 inner steps from meta-batch 2) and costs more at 84x84 (1.17-1.56x at
meta-batch 2-8), where one task's convolutions already run efficiently and the stacked maps outgrow
the cache.
"""

from __future__ import annotations

from collections.abc import Collection

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaplus.errors import ConfigError
from metaplus.inner.batched import BatchedAdapt
from metaplus.inner.clone_adapt import LossFn, UpdateRule
from metaplus.nn.conv4 import ACTIVATIONS, Conv4


def check_grouped_backbone(model: nn.Module) -> None:
    """The grouped formulation is written for Conv-4's blocks (conv, BN, pool, activation) and head."""
    if not isinstance(model, Conv4):
        raise ConfigError(
            "engine",
            f"grouped is invalid with the {type(model).__name__} backbone: it runs metaplus.nn.Conv4 only "
            f"(use algo.engine=l2l or batched, or model=conv4)",
        )


def stack_tasks_on_channels(x: Tensor) -> Tensor:
    """(T, N, C, H, W) -> (N, T*C, H, W): task t's channels at t*C .. t*C+C-1."""
    tasks, n, channels, height, width = x.shape
    return x.transpose(0, 1).reshape(n, tasks * channels, height, width)


def per_step_set(param: Tensor, step: int) -> Tensor:
    """Per-task (T, C) or per-task per-step (T, steps, C) -> (T, C) for ``step`` (clamped to the last
    set, as :class:`~metaplus.nn.batchnorm.PerStepBatchNorm2d` selects it)."""
    if param.dim() == 2:
        return param
    return param[:, min(max(step, 0), param.shape[1] - 1)]


def grouped_conv4(model: Conv4, params: dict[str, Tensor], x: Tensor, step: int = 0) -> Tensor:
    """``model``'s forward for T tasks at once: ``params`` maps each of ``model``'s parameter names to
    a (T, *shape) tensor (task t's value at index t), ``x`` is (T, N, *input_shape); returns the
    per-task logits (T, N, output_dim), equal to ``model`` run on each task with that task's values."""
    tasks, n = x.shape[:2]
    h = stack_tasks_on_channels(x)
    if model.channels_last:  # the layout Conv4 itself would use for these images
        h = h.contiguous(memory_format=torch.channels_last)
    for i, block in enumerate(model.blocks):
        prefix = f"blocks.{i}."
        weight, bias = params[prefix + "conv.weight"], params[prefix + "conv.bias"]
        conv = block.conv
        h = F.conv2d(
            h,
            weight.reshape(-1, *weight.shape[2:]),
            bias.reshape(-1),
            stride=conv.stride,
            padding=conv.padding,
            dilation=conv.dilation,
            groups=tasks,
        )
        h = grouped_batch_norm(block.norm, params[prefix + "norm.weight"], params[prefix + "norm.bias"], h, step)
        activation = ACTIVATIONS[block.activation]
        if block.pool_first:
            h = activation(F.max_pool2d(h, kernel_size=2, stride=2))
        else:
            h = F.max_pool2d(activation(h), kernel_size=2, stride=2)
    features = h.reshape(n, tasks, -1).transpose(0, 1)  # (T, N, F), each task's features in flatten(1)'s order
    weight, bias = params["head.weight"], params["head.bias"]
    return torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2))


def grouped_batch_norm(norm: nn.Module, weight: Tensor, bias: Tensor, h: Tensor, step: int) -> Tensor:
    """:class:`PerStepBatchNorm2d` on the task-stacked (N, T*C, H, W) map: batch statistics per channel
    are per task here; running statistics (evaluation with ``bn_stats=running``) are the layer's own,
    the same for every task."""
    tasks = weight.shape[0]
    weight, bias = per_step_set(weight, step).reshape(-1), per_step_set(bias, step).reshape(-1)
    if norm.training or norm.stats == "batch":
        return F.batch_norm(h, None, None, weight, bias, training=True, eps=norm.eps)
    mean, var = norm._select(norm.running_mean, step), norm._select(norm.running_var, step)
    return F.batch_norm(h, mean.repeat(tasks), var.repeat(tasks), weight, bias, training=False, eps=norm.eps)


def per_task_losses(loss_fn: LossFn, predictions: Tensor, targets: Tensor) -> Tensor:
    """(T,) losses, each task's prediction against its own targets."""
    return torch.stack([loss_fn(p, y) for p, y in zip(predictions, targets)])


class GroupedAdapt(BatchedAdapt):
    """The vmap engine's interface (``chunks``, ``query_losses``, ``scored_queries``) computed with
    grouped convolutions instead of vmap; ``chunk_size`` as there."""

    @staticmethod
    def check_backbone(model: nn.Module) -> None:
        """Called by the learner when it is built: a backbone other than Conv-4 fails at once."""
        check_grouped_backbone(model)

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
        """As :meth:`BatchedAdapt.scored_queries`: query losses ``(T, S)`` and predictions
        ``(T, S, Q, ...)`` after each number of inner steps in ``scored``."""
        check_grouped_backbone(model)
        tasks = support_x.shape[0]
        # expand: T views of one tensor, no copy; autograd sums their gradients back into the parameter.
        # Under no_grad (evaluation) detached first: a view made there still says requires_grad.
        outside_graph = not torch.is_grad_enabled()
        params = {n: (p.detach() if outside_graph else p).expand(tasks, *p.shape) for n, p in model.named_parameters()}
        current = {n: p for n, p in params.items() if n in adapted}
        losses, predictions = [], []

        def score(after: int) -> None:
            for _ in range(scored.count(after)):
                predictions.append(grouped_conv4(model, {**params, **current}, query_x, max(after - 1, 0)))
                losses.append(per_task_losses(loss_fn, predictions[-1], query_y))

        score(0)
        for step in range(steps):
            if current:
                with torch.enable_grad():  # evaluation calls under no_grad: the inner loop still needs gradients
                    # a tensor outside any graph (evaluation) becomes a leaf to differentiate against
                    inputs = {n: p if p.requires_grad else p.detach().requires_grad_() for n, p in current.items()}
                    logits = grouped_conv4(model, {**params, **inputs}, support_x, step)
                    loss = per_task_losses(loss_fn, logits, support_y).sum()
                    grads = torch.autograd.grad(loss, list(inputs.values()), create_graph=not first_order)
                current = {n: p + rule(n, p, g, step) for (n, p), g in zip(inputs.items(), grads)}
            score(step + 1)
        return torch.stack(losses, dim=1), torch.stack(predictions, dim=1)
