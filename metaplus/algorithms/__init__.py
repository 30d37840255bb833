"""Algorithms: one module each, extending the episodic LightningModule in ``base``."""

from metaplus.algorithms.anil import ANIL
from metaplus.algorithms.base import EpisodicLearner, NonFiniteLossError
from metaplus.algorithms.maml import MAML
from metaplus.algorithms.metasgd import MetaSGD
from metaplus.algorithms.mtnet import MTNet
from metaplus.algorithms.pretrain import Pretrain
from metaplus.algorithms.reptile import Reptile

__all__ = ["ANIL", "EpisodicLearner", "MAML", "MetaSGD", "MTNet", "NonFiniteLossError", "Pretrain", "Reptile"]
