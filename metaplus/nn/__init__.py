"""Backbones: plain nn.Modules whose ``forward(x, step=0)`` takes the inner-step index.

The step index is the one seam every backbone shares: per-step batch norm (MAML++ BNRS/BNWB) reads
it; others ignore it. Backbones expose their classifier/regressor as ``self.head`` so algorithms
such as ANIL can find "the head" without knowing the architecture.
"""
from metaplus.nn.mlp import MLP
from metaplus.nn.params import head_parameter_names

__all__ = ["MLP", "head_parameter_names"]
