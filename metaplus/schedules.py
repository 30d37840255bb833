"""Training-time schedules of MAML++ (Antoniou et al. 2019), as plain functions of the epoch.

The outer learning-rate cosine is not here: it is Lightning's scheduler (``CosineAnnealingLR``).
"""

from __future__ import annotations

import torch
from torch import Tensor

MSL_FLOOR = 0.03  # non-final weights never fall below MSL_FLOOR / steps (reference code)


def msl_weights(steps: int, epoch: int, msl_epochs: int) -> Tensor:
    """Multi-step loss importance of the query loss after each inner step 1..``steps``.

    The reference schedule: uniform 1/N at epoch 0; every non-final weight decays by 1/(N·E) per
    epoch down to 0.03/N, the final weight grows by (N-1)/(N·E) per epoch up to 1 - (N-1)·0.03/N
    (both limits are reached at the same epoch, so the weights always sum to 1); from epoch E on,
    only the final step counts.
    """
    if steps < 1:
        raise ValueError(f"msl_weights needs at least one inner step, got {steps}")
    if epoch >= msl_epochs:
        return torch.nn.functional.one_hot(torch.tensor(steps - 1), steps).double()
    decay = epoch / (steps * msl_epochs)
    floor = MSL_FLOOR / steps
    weights = torch.full((steps,), 1.0 / steps, dtype=torch.float64)
    weights[:-1] = (weights[:-1] - decay).clamp(min=floor)
    weights[-1] = min(weights[-1].item() + (steps - 1) * decay, 1.0 - (steps - 1) * floor)
    return weights


def first_order_at(epoch: int, da_epochs: int) -> bool:
    """Derivative-order annealing: first order during the first ``da_epochs`` epochs, then second.

    (The reference code switches when ``epoch > da_epochs``, i.e. one epoch later; the paper's text,
    "the first 50 epochs", is what this follows.)
    """
    return epoch < da_epochs
