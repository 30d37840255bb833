"""The literature's evaluation protocol: fixed episodes, mean and 95% confidence interval.

Every algorithm is scored by the same code: adapt on each episode's support set, score its query
set, then aggregate over the fixed episodes with :func:`summarise` (mean, 1.96*std/sqrt(n)).
Episodes are keyed by index so that, under DDP, episodes that the distributed sampler padded or
duplicated are counted exactly once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


def mean_ci95(values: Tensor) -> tuple[float, float]:
    """Mean and half-width of the normal 95% interval, 1.96 * std / sqrt(n) (population std, as in
    the MAML and MAML++ reference code)."""
    values = values.double().flatten()
    n = values.numel()
    if n == 0:
        raise ValueError("no episodes were evaluated")
    std = values.std(unbiased=False).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


@dataclass
class EpisodeRecords:
    """Per-episode curves gathered during one evaluation: value after 0..K inner steps."""

    index: list[Tensor] = field(default_factory=list)
    loss: list[Tensor] = field(default_factory=list)
    metric: list[Tensor] = field(default_factory=list)

    def add(self, index: Tensor, loss_curve: Tensor, metric_curve: Tensor) -> None:
        self.index.append(index.reshape(1))
        self.loss.append(loss_curve.detach().reshape(1, -1))
        self.metric.append(metric_curve.detach().reshape(1, -1))

    def stacked(self) -> tuple[Tensor, Tensor, Tensor]:
        return torch.cat(self.index), torch.cat(self.loss), torch.cat(self.metric)


def unique_episodes(index: Tensor, *curves: Tensor) -> tuple[Tensor, ...]:
    """Keep the first record of each episode index (gathered ranks may repeat padded episodes)."""
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]
    return (index[keep], *(c[order][keep] for c in curves))


def summarise(stage: str, metric: str, loss: Tensor, values: Tensor) -> dict[str, float]:
    """Metrics named as logged: ``{stage}/loss``, ``{stage}/{metric}``, ``{stage}/{metric}_ci95``
    (final step), plus ``{stage}/{metric}_step0`` (before any adaptation)."""
    m, ci = mean_ci95(values[:, -1])
    loss_mean, loss_ci = mean_ci95(loss[:, -1])
    m0, _ = mean_ci95(values[:, 0])
    return {
        f"{stage}/loss": loss_mean,
        f"{stage}/loss_ci95": loss_ci,
        f"{stage}/{metric}": m,
        f"{stage}/{metric}_ci95": ci,
        f"{stage}/{metric}_step0": m0,
        f"{stage}/episodes": float(values.shape[0]),
    }


def curve(values: Tensor) -> tuple[list[float], list[float]]:
    """Mean metric and its 95% CI after 0, 1, ..., K inner steps (the adaptation curve)."""
    means, cis = zip(*(mean_ci95(values[:, k]) for k in range(values.shape[1])))
    return [round(m, 6) for m in means], [round(c, 6) for c in cis]
