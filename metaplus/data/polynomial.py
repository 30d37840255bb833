"""Polynomial regression of a given order (Lee & Choi 2018): y = sum_i c_i x^i, c_i ~ U[-1, 1] / 2^i."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from metaplus.data.episodes import Task, float_inputs, uniform
from metaplus.errors import check


def preprocessing() -> Callable:
    """Inputs are numbers: ``metaplus.load(...).preprocess`` turns them into the float32 tensor the tasks hold."""
    return float_inputs


class PolynomialTasks:
    def __init__(
        self, shots: int, queries: int, order: int = 2, x_range: Sequence[float] = (-2.0, 2.0), split: str = "train"
    ):
        check("source.order", order, isinstance(order, int) and order >= 0, "an integer >= 0")
        self.shots, self.queries, self.order, self.x_range = shots, queries, order, x_range

    def sample(self, generator: torch.Generator) -> Task:
        powers = torch.arange(self.order + 1, dtype=torch.float32)
        coeffs = uniform(generator, -1.0, 1.0, size=(self.order + 1,)) / 2.0**powers
        x = uniform(generator, *self.x_range, size=(self.shots + self.queries, 1))
        y = (x**powers * coeffs).sum(dim=1, keepdim=True)
        return Task(x[: self.shots], y[: self.shots], x[self.shots :], y[self.shots :])
