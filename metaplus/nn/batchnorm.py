"""Batch norm that knows the inner step: MAML++'s BNRS (per-step running statistics) and BNWB
(per-step weights and biases), configured once for every backbone by :func:`configure_batchnorm`.

A backbone only has to use :class:`PerStepBatchNorm2d` and pass ``step`` to it; the algorithm then
decides how many sets of statistics and affine parameters each layer holds. The step index is
clamped to the last set, so evaluating with more inner steps than training reuses the last set.

Statistics modes (``bn_stats``):
- ``batch``: always normalise with the current batch's statistics ("transductive" BN), in training
  and in evaluation. This is what the MAML and MAML++ reference code do, so it is the mode that
  reproduces the published numbers. With ``per_step_stats`` the per-step running statistics are
  still kept (as the reference code does) but never used to normalise.
- ``running``: training normalises with batch statistics and updates the running statistics of the
  current step; evaluation (``model.eval()``) normalises with the running statistics of the
  matching step. This is BNRS as the MAML++ paper's text describes it (one set without
  ``per_step_stats``, i.e. ordinary BN).

Running statistics are buffers that do not require grad, so learn2learn's ``clone_module`` shares
them: a forward pass of an adapted clone updates the statistics of the original backbone. Tasks
trained at once on worker threads record their updates instead (:func:`deferred_running_stats`) and
the training step applies them in task order (:func:`replay_running_stats`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaplus.errors import check_choice, check_int

STATS_MODES = ("batch", "running")
_explicit_statistics = [False]  # set by explicit_batch_statistics(); a list so the flag is shared
_deferred = threading.local()  # .updates: this thread's record of running-statistics updates, or None


class StatUpdate(NamedTuple):
    """One deferred update of a layer's running statistics (the buffers, not the layer: a recorded
    adapted clone would be kept alive with them)."""

    running_mean: Tensor
    running_var: Tensor
    row: int  # the inner step's set
    momentum: float
    batch_mean: Tensor
    batch_var: Tensor  # unbiased, as the kernel keeps it


@contextmanager
def explicit_batch_statistics() -> Iterator[None]:
    """Within this block, layers that normalise with batch statistics compute them with plain tensor
    ops (:func:`batch_statistics_norm`) and update no running statistics. Needed under ``torch.vmap``
    (the batched inner-loop engine): each vmapped task then gets its own statistics, with correct
    second-order gradients (the native batch-norm kernel under vmap gave relative errors of 3e-2),
    and no in-place buffer update is attempted with per-task values."""
    previous = _explicit_statistics[0]
    _explicit_statistics[0] = True
    try:
        yield
    finally:
        _explicit_statistics[0] = previous


@contextmanager
def deferred_running_stats() -> Iterator[list[StatUpdate]]:
    """Within this block, on this thread only, training forwards leave the running statistics as they
    are and append each update they would have made to the yielded list, for
    :func:`replay_running_stats` to apply later. For a meta-batch's tasks trained at once on worker
    threads: their in-place updates of the shared buffers would race, and the order in which they land
    (so the statistics' last bits) would depend on the threads' timing; replayed in task order, they
    do not."""
    previous = getattr(_deferred, "updates", None)
    _deferred.updates = updates = []
    try:
        yield updates
    finally:
        _deferred.updates = previous


def replay_running_stats(updates: list[StatUpdate]) -> None:
    """Apply recorded running-statistics updates in order, with the formula of the batch-norm kernel
    (``momentum * batch + (1 - momentum) * running``, in float64, then stored in the buffer's dtype)."""
    with torch.no_grad():
        for u in updates:
            for running, batch in ((u.running_mean[u.row], u.batch_mean), (u.running_var[u.row], u.batch_var)):
                running.copy_(u.momentum * batch.double() + (1 - u.momentum) * running.double())


def batch_statistics(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of (N, C, H, W), shaped (1, C, 1, 1), in float32 at least:
    under bf16/fp16 autocast the convolutions hand over half-precision maps, and sums of thousands
    of them kept in 8 significant bits lose the variance (native batch norm accumulates in fp32 too)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    var = (x - mean).square().mean(dim=(0, 2, 3), keepdim=True)
    return mean, var


def batch_statistics_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    """Batch norm of (N, C, H, W) with this batch's biased variance, as ``F.batch_norm(training=True)``:
    statistics and normalisation in float32 at least, the result in ``x``'s dtype (as the native kernel
    returns a bf16 map for a bf16 input under autocast)."""
    mean, var = batch_statistics(x)
    out = (x.to(mean.dtype) - mean) * torch.rsqrt(var + eps) * weight[:, None, None] + bias[:, None, None]
    return out.to(x.dtype)


class PerStepBatchNorm2d(nn.Module):
    """BatchNorm2d with optional per-step running statistics and per-step affine parameters.

    Default (``steps=1``, no per-step sets, ``stats="batch"``): plain BN that always uses batch
    statistics and keeps no running statistics (MAML's reference behaviour). ``weight``/``bias`` are
    ``(C,)`` when shared across steps and ``(steps, C)`` per step; running statistics, when kept, are
    ``(sets, C)`` buffers (``sets`` = ``steps`` with ``per_step_stats``, else 1).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        check_int("num_features", num_features, 1)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.configure()

    def configure(
        self, steps: int = 1, per_step_stats: bool = False, per_step_affine: bool = False, stats: str = "batch"
    ) -> None:
        """Reshape this layer for ``steps`` inner steps. Call before the optimizer is built: the
        affine parameters are replaced by new ones (each set starts from the current first set)."""
        check_int("inner_steps", steps, 0)
        check_choice("bn_stats", stats, STATS_MODES)
        steps = max(steps, 1)  # zero inner steps still run one forward pass at step 0
        self.steps, self.stats = steps, stats
        self.per_step_stats, self.per_step_affine = per_step_stats, per_step_affine
        self.weight = nn.Parameter(self._affine_sets(self.weight, steps if per_step_affine else 1))
        self.bias = nn.Parameter(self._affine_sets(self.bias, steps if per_step_affine else 1))
        stat_sets = steps if per_step_stats else 1
        tracked = per_step_stats or stats == "running"
        self.register_buffer("running_mean", torch.zeros(stat_sets, self.num_features) if tracked else None)
        self.register_buffer("running_var", torch.ones(stat_sets, self.num_features) if tracked else None)

    def _affine_sets(self, current: Tensor, sets: int) -> Tensor:
        first = current.detach().reshape(-1, self.num_features)[0]
        return first.clone() if sets == 1 else first.repeat(sets, 1)

    @staticmethod
    def _row(tensor: Tensor, step: int) -> int:
        """The row of a per-step tensor that holds the set for ``step``, clamped to the last set."""
        return min(max(step, 0), tensor.shape[0] - 1)

    @classmethod
    def _select(cls, tensor: Tensor, step: int) -> Tensor:
        """The set for ``step`` (a row of a per-step tensor)."""
        return tensor[cls._row(tensor, step)]

    def forward(self, x: Tensor, step: int = 0) -> Tensor:
        weight = self.weight if self.weight.dim() == 1 else self._select(self.weight, step)
        bias = self.bias if self.bias.dim() == 1 else self._select(self.bias, step)
        if _explicit_statistics[0] and (self.training or self.stats == "batch"):
            return batch_statistics_norm(x, weight, bias, self.eps)
        if self.running_mean is None:
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)
        mean, var = self._select(self.running_mean, step), self._select(self.running_var, step)
        if not self.training:
            if self.stats == "running":
                return F.batch_norm(x, mean, var, weight, bias, training=False, eps=self.eps)
            return F.batch_norm(x, None, None, weight, bias, training=True, eps=self.eps)
        # Training: batch statistics; the step's running statistics (row views) are updated in place...
        updates = getattr(_deferred, "updates", None)
        if updates is None:
            return F.batch_norm(x, mean, var, weight, bias, training=True, momentum=self.momentum, eps=self.eps)
        # ...or, deferred, recorded: with momentum 1 the kernel writes exactly this batch's mean and
        # unbiased variance into the fresh tensors (1 * batch + 0 * fresh).
        batch_mean, batch_var = torch.zeros_like(mean), torch.ones_like(var)
        out = F.batch_norm(x, batch_mean, batch_var, weight, bias, training=True, momentum=1.0, eps=self.eps)
        row = self._row(self.running_mean, step)
        updates.append(StatUpdate(self.running_mean, self.running_var, row, self.momentum, batch_mean, batch_var))
        return out

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, steps={self.steps}, stats={self.stats}, "
            f"per_step_stats={self.per_step_stats}, per_step_affine={self.per_step_affine}"
        )


def per_step_batchnorms(model: nn.Module) -> dict[str, PerStepBatchNorm2d]:
    return {name: m for name, m in model.named_modules() if isinstance(m, PerStepBatchNorm2d)}


def configure_batchnorm(
    model: nn.Module, steps: int, per_step_stats: bool = False, per_step_affine: bool = False, stats: str = "batch"
) -> dict[str, PerStepBatchNorm2d]:
    """Configure every :class:`PerStepBatchNorm2d` of ``model``; return them by module name.

    Plain ``torch.nn`` batch-norm layers cannot take the step index, so they are refused rather
    than silently left out of BNRS/BNWB.
    """
    plain = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if plain and (per_step_stats or per_step_affine):
        raise TypeError(
            f"{type(model).__name__} uses torch.nn batch norm at {plain}: per-step BN "
            f"needs metaplus.nn.PerStepBatchNorm2d so the inner step reaches it"
        )
    layers = per_step_batchnorms(model)
    for layer in layers.values():
        layer.configure(steps, per_step_stats=per_step_stats, per_step_affine=per_step_affine, stats=stats)
    return layers


def batchnorm_parameter_names(model: nn.Module) -> set[str]:
    """Names of the affine parameters of every per-step BN layer (MAML++ never adapts them with BNWB)."""
    return {
        f"{name}.{p}" if name else p
        for name, layer in per_step_batchnorms(model).items()
        for p, _ in layer.named_parameters(recurse=False)
    }
