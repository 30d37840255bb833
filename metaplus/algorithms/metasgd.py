"""Meta-SGD (Li et al. 2017): learn a per-parameter inner learning rate alongside the initialisation.

Every adapted parameter p gets a tensor alpha_p of p's shape, initialised to ``inner_lr``; the inner
update is p <- p - alpha_p * grad (element-wise, so alpha also learns a direction: it may turn
negative). The rates are ordinary parameters of the learner, so the outer optimizer updates them with
theta and checkpoints carry them. Their gradient exists even with ``first_order=True``: the detached
inner gradient still multiplies alpha in the graph.

learn2learn's ``l2l.algorithms.MetaSGD`` wraps and clones the whole model itself and updates every
parameter, which does not fit the CloneAdapt engine (it clones, and adapts a chosen subset); so the
rates live in a :class:`~metaplus.inner.learned_rates.LearnedRates` dict (keys: the parameter names
with "__" for "."), which is also the update rule handed to the engine by the ``inner_rule`` hook.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from metaplus.algorithms.base import EpisodicLearner
from metaplus.inner.clone_adapt import UpdateRule
from metaplus.inner.learned_rates import LearnedRates


class MetaSGD(EpisodicLearner):
    def __init__(self, backbone: nn.Module, task_type: str, name: str = "metasgd", **shared: Any):
        super().__init__(backbone, task_type, name=name, **shared)
        adapted = self.adapted_names()
        self.inner_lrs = LearnedRates.per_element_rates(
            {n: p for n, p in backbone.named_parameters() if n in adapted}, self.inner_lr
        )

    def inner_rule(self) -> UpdateRule:
        return self.inner_lrs.rule()
