"""ANIL (Raghu et al. 2020): Almost No Inner Loop.

The inner loop adapts only the head; the body is learned by the outer loop alone, from the query
loss of the head-adapted model (second order by default: the head's inner update depends on the
body's features, and that dependence is differentiated too). Which parameters form the head is
read off the model (``metaplus.nn.head_parameter_names``), so every backbone works unchanged.
"""

from __future__ import annotations

from metaplus.algorithms.base import EpisodicLearner
from metaplus.nn import head_parameter_names


class ANIL(EpisodicLearner):
    def adapted_names(self) -> set[str]:
        return head_parameter_names(self.backbone)
