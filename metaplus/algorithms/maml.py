"""MAML (Finn et al. 2017): second-order by default, FOMAML with ``first_order=True``."""
from __future__ import annotations

from metaplus.algorithms.base import EpisodicLearner


class MAML(EpisodicLearner):
    """The base episodic learner is exactly MAML: adapt every parameter by SGD on the support set,
    meta-learn the initialisation from the query loss. MAML++'s switches extend this class."""
