"""The literature's evaluation protocol: fixed episodes, mean and 95% confidence interval.

Every algorithm is scored by the same code: adapt on each episode's support set, score its query
set, then aggregate over the fixed episodes with :func:`summarise` (mean, 1.96*std/sqrt(n)).

The per-episode scores are torchmetrics' (:func:`episode_score`); the per-episode curves are kept
in an :class:`EpisodeCurves` metric whose states torchmetrics concatenates across DDP ranks. On top
of it, two thin pieces torchmetrics does not have: episodes are keyed by index so that episodes the
distributed sampler padded or duplicated are counted exactly once (:func:`unique_episodes`), and the
population-std normal interval of the MAML papers (:func:`mean_ci95`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional import mean_squared_error
from torchmetrics.functional.classification import multiclass_accuracy
from torchmetrics.utilities import dim_zero_cat

from metaplus.errors import check_choice

# Which evaluations score the query set after every inner step (the adaptation curve); the others
# score it only before adaptation (step 0) and after the last step.
EVAL_CURVES = {"none": (), "test": ("test",), "all": ("val", "test")}


def check_eval_curve(value: str) -> None:
    check_choice("eval_curve", value, set(EVAL_CURVES))


def episode_score(task_type: str, prediction: Tensor, target: Tensor) -> Tensor:
    """The reported metric of one episode's predictions: MSE (regression) or accuracy (classification,
    the fraction of arg-max predictions that hit the label)."""
    if task_type == "regression":
        return mean_squared_error(prediction, target)
    return multiclass_accuracy(prediction, target, num_classes=prediction.shape[-1], average="micro")


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, 1.96 * std / sqrt(n) (population std, as in
    the MAML and MAML++ reference code)."""
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("no episodes were evaluated")
    std = values.std(unbiased=False).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


class EpisodeCurves(Metric):
    """Per-episode query loss and metric at the scored inner steps, keyed by the episode's index.

    The three states are lists concatenated across ranks by torchmetrics' sync (``dist_reduce_fx="cat"``,
    uneven sizes allowed); :meth:`compute` returns ``(index, loss, metric)`` with one row per distinct
    episode, sorted by index.
    """

    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("index", default=[], dist_reduce_fx="cat")
        self.add_state("loss", default=[], dist_reduce_fx="cat")
        self.add_state("metric", default=[], dist_reduce_fx="cat")

    def update(self, index: Tensor, loss_curve: Tensor, metric_curve: Tensor) -> None:
        self.index.append(index.detach().reshape(1).long())
        self.loss.append(loss_curve.detach().float().reshape(1, -1))
        self.metric.append(metric_curve.detach().float().reshape(1, -1))

    def compute(self) -> tuple[Tensor, Tensor, Tensor]:
        return unique_episodes(dim_zero_cat(self.index), dim_zero_cat(self.loss), dim_zero_cat(self.metric))


def unique_episodes(index: Tensor, *curves: Tensor) -> tuple[Tensor, ...]:
    """Keep the first record of each episode index (gathered ranks may repeat padded episodes)."""
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return (index[keep], *(c[order][keep] for c in curves))


def summarise(stage: str, metric: str, loss: Tensor, values: Tensor, before: Tensor | None = None) -> dict[str, float]:
    """Metrics named as logged: ``{stage}/loss``, ``{stage}/{metric}``, ``{stage}/{metric}_ci95``
    (final step), plus ``{stage}/{metric}_step0`` (before any adaptation) and how many episodes it
    covers, ``{stage}/step0_episodes``. Column 0 of ``loss`` and ``values`` is before adaptation, the
    last column after the last inner step. ``before``: a mask of the episodes whose column 0 was scored
    (the curve's episodes; default all)."""
    m, ci = mean_ci95(values[:, -1])
    loss_mean, loss_ci = mean_ci95(loss[:, -1])
    scored = values[:, 0] if before is None else values[before.to(values.device), 0]
    m0, _ = mean_ci95(scored)
    return {
        f"{stage}/loss": loss_mean,
        f"{stage}/loss_ci95": loss_ci,
        f"{stage}/{metric}": m,
        f"{stage}/{metric}_ci95": ci,
        f"{stage}/{metric}_step0": m0,
        f"{stage}/step0_episodes": float(scored.shape[0]),
        f"{stage}/episodes": float(values.shape[0]),
    }


def curve(values: Tensor) -> tuple[list[float], list[float]]:
    """Mean metric and its 95% CI after 0, 1, ..., K inner steps (the adaptation curve)."""
    means, cis = zip(*(mean_ci95(values[:, k]) for k in range(values.shape[1])))
    return [round(m, 6) for m in means], [round(c, 6) for c in cis]
