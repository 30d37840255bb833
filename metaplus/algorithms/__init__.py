"""Algorithms: one module each, extending the episodic LightningModule in ``base``."""
from metaplus.algorithms.base import EpisodicLearner, NonFiniteLossError
from metaplus.algorithms.maml import MAML
from metaplus.algorithms.mtnet import MTNet

__all__ = ["EpisodicLearner", "MAML", "MTNet", "NonFiniteLossError"]
