"""Fully connected backbone for regression (MAML's 1-40-40-1 ReLU network by default)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metaplus.errors import check, check_int


class MLP(nn.Module):
    """Linear/ReLU stack. ``step`` is the inner-step index every backbone accepts (unused here)."""

    def __init__(self, input_shape: Sequence[int] = (1,), output_dim: int = 1, hidden: Sequence[int] = (40, 40)):
        super().__init__()
        check("hidden", hidden, all(isinstance(h, int) and h > 0 for h in hidden), "a list of positive integers")
        check_int("output_dim", output_dim, 1)
        sizes = [int(torch.tensor(input_shape).prod()), *hidden]
        layers: list[nn.Module] = []
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(sizes[-1], output_dim)

    def forward(self, x: torch.Tensor, step: int = 0) -> torch.Tensor:
        return self.head(self.body(x.flatten(1)))
