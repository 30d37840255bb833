"""Backbones: plain nn.Modules whose ``forward(x, step=0)`` takes the inner-step index.

The step index is the one seam every backbone shares: per-step batch norm (MAML++ BNRS/BNWB) reads
it; others ignore it. Backbones expose their classifier/regressor as ``self.head`` so algorithms
such as ANIL can find "the head" without knowing the architecture.
"""

from metaplus.nn.batchnorm import PerStepBatchNorm2d, batchnorm_parameter_names, configure_batchnorm
from metaplus.nn.conv4 import Conv4
from metaplus.nn.init import initialise
from metaplus.nn.mlp import MLP
from metaplus.nn.params import head_parameter_names
from metaplus.nn.resnet12 import ResNet12

__all__ = [
    "Conv4",
    "MLP",
    "PerStepBatchNorm2d",
    "batchnorm_parameter_names",
    "configure_batchnorm",
    "head_parameter_names",
    "initialise",
    "ResNet12",
]
