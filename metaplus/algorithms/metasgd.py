"""Meta-SGD (Li et al. 2017): learn a per-parameter inner learning rate alongside the initialisation.

Every adapted parameter p gets a tensor alpha_p of p's shape, initialised to ``inner_lr``; the inner
update is p <- p - alpha_p * grad (element-wise, so alpha also learns a direction: it may turn
negative). The rates are ordinary parameters of the learner, so the outer optimizer updates them with
theta and checkpoints carry them. Their gradient exists even with ``first_order=True``: the detached
inner gradient still multiplies alpha in the graph.

learn2learn's ``l2l.algorithms.MetaSGD`` wraps and clones the whole model itself and updates every
parameter, which does not fit the CloneAdapt engine (it clones, and adapts a chosen subset); so the
rates live here in a ParameterDict and reach the engine through the ``inner_rule`` hook.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metaplus.algorithms.base import EpisodicLearner
from metaplus.inner.clone_adapt import UpdateRule


def rate_key(name: str) -> str:
    """A parameter name as a ParameterDict key (module keys may not contain dots)."""
    return name.replace(".", "__")


class MetaSGD(EpisodicLearner):
    def __init__(
        self,
        backbone: nn.Module,
        task_type: str,
        inner_steps: int = 1,
        test_inner_steps: int | None = None,
        inner_lr: float = 0.01,
        meta_lr: float = 1e-3,
        first_order: bool = False,
        name: str = "metasgd",
        inner_loop: Any = None,
        engine: str = "l2l",
        chunk_size: int | None = None,
    ):
        super().__init__(backbone, task_type, inner_steps=inner_steps, test_inner_steps=test_inner_steps,
                         inner_lr=inner_lr, meta_lr=meta_lr, first_order=first_order, name=name,
                         inner_loop=inner_loop, engine=engine, chunk_size=chunk_size)
        adapted = self.adapted_names()
        self.inner_lrs = nn.ParameterDict({
            rate_key(n): nn.Parameter(torch.full_like(p.detach(), inner_lr))
            for n, p in backbone.named_parameters() if n in adapted})

    def inner_rule(self) -> UpdateRule:
        rates = self.inner_lrs
        return lambda name, param, grad, step: -rates[rate_key(name)] * grad
