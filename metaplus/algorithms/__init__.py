"""Algorithms: one module each, extending the episodic LightningModule in ``base``."""
from metaplus.algorithms.base import EpisodicLearner, NonFiniteLossError
from metaplus.algorithms.maml import MAML

__all__ = ["EpisodicLearner", "MAML", "NonFiniteLossError"]
