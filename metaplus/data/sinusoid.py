"""Sinusoid regression (Finn et al. 2017), with the MT-net frequency variant (Lee & Choi 2018).

y = A sin(f x - phi),  A ~ U[amplitude], phi ~ U[phase], x ~ U[x_range], f ~ U[frequency] or 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from metaplus.data.episodes import Task, float_inputs, uniform
from metaplus.errors import check


def preprocessing() -> Callable:
    """Inputs are numbers: ``metaplus.load(...).preprocess`` turns them into the float32 tensor the tasks hold."""
    return float_inputs


class SinusoidTasks:
    def __init__(
        self,
        shots: int,
        queries: int,
        amplitude: Sequence[float] = (0.1, 5.0),
        phase: Sequence[float] = (0.0, math.pi),
        x_range: Sequence[float] = (-5.0, 5.0),
        frequency: Sequence[float] | None = None,
        split: str = "train",
    ):
        # Every split shares one task distribution; fixed val/test tasks come from their seeds.
        for name, rng in (("amplitude", amplitude), ("phase", phase), ("x_range", x_range), ("frequency", frequency)):
            if rng is not None:
                check(f"source.{name}", rng, len(rng) == 2 and rng[0] <= rng[1], "a [low, high] pair with low <= high")
        self.shots, self.queries = shots, queries
        self.amplitude, self.phase, self.x_range, self.frequency = amplitude, phase, x_range, frequency

    def function(self, generator: torch.Generator):
        amp = uniform(generator, *self.amplitude)
        phase = uniform(generator, *self.phase)
        freq = uniform(generator, *self.frequency) if self.frequency is not None else torch.tensor(1.0)
        return lambda x: amp * torch.sin(freq * x - phase)

    def sample(self, generator: torch.Generator) -> Task:
        f = self.function(generator)
        x = uniform(generator, *self.x_range, size=(self.shots + self.queries, 1))
        y = f(x)
        return Task(x[: self.shots], y[: self.shots], x[self.shots :], y[self.shots :])
