"""T-nets' meta-learned transformations (Lee & Choi 2018), inserted into any backbone.

Each linear map W of the backbone (every ``nn.Linear`` and ``nn.Conv2d``) is followed by a square
transformation T over its output units: y = T (W x + b). T starts as the identity, so a freshly
wrapped backbone computes exactly what it did before. For a convolution T is a 1x1 convolution that
mixes channels (the same T at every pixel), as in the reference code.

The inner loop adapts W (and b) only; T is learned by the outer loop, so it shapes the metric of the
inner gradient step without being changed by it. Which parameters are the T's is read off the model
(:func:`transform_parameter_names`), never hard-coded per backbone.

:func:`insert_transforms` replaces each linear map in place by a :class:`Transformed` wrapper, so
the backbone's ``forward`` and its ``head`` attribute keep working unchanged; parameter names gain
one level: ``head.weight`` becomes ``head.layer.weight`` and T is ``head.transform.weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LINEAR_MAPS = (nn.Linear, nn.Conv2d)


class Transform(nn.Module):
    """A square map over the channel (unit) axis: dim -1 for (B, C) inputs, dim 1 for (B, C, H, W)."""

    def __init__(self, units: int, conv: bool, like: Tensor | None = None):
        super().__init__()
        self.units, self.conv = units, conv
        options = {} if like is None else dict(dtype=like.dtype, device=like.device)
        self.weight = nn.Parameter(torch.eye(units, **options))

    def forward(self, x: Tensor) -> Tensor:
        if self.conv:  # a 1x1 convolution: the same channel mixing at every position
            return F.conv2d(x, self.weight[:, :, None, None])
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"{self.units}, conv={self.conv}"


class Transformed(nn.Module):
    """``layer`` (the adapted linear map W, b) followed by ``transform`` (the meta-learned T)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        if not isinstance(layer, LINEAR_MAPS):
            raise TypeError(f"T-nets transform nn.Linear or nn.Conv2d outputs, not {type(layer).__name__}")
        self.layer = layer
        conv = isinstance(layer, nn.Conv2d)
        units = layer.out_channels if conv else layer.out_features
        self.transform = Transform(units, conv=conv, like=layer.weight)  # same dtype and device as W

    @property
    def units(self) -> int:
        """Output units of W (rows of a Linear weight, output channels of a Conv2d weight)."""
        return self.transform.units

    def forward(self, x: Tensor) -> Tensor:
        return self.transform(self.layer(x))


def linear_maps(model: nn.Module) -> dict[str, nn.Module]:
    """Every ``nn.Linear``/``nn.Conv2d`` of ``model`` by module name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LINEAR_MAPS)}


def transformed_layers(model: nn.Module) -> dict[str, Transformed]:
    """The :class:`Transformed` wrappers of ``model`` by module name (empty before insertion)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, Transformed)}


def insert_transforms(model: nn.Module) -> dict[str, Transformed]:
    """Wrap every linear map of ``model`` (in place) so a T follows it; return the wrappers by name.

    Idempotent: a layer already wrapped is left alone. Call before building the optimizer, since it
    adds parameters. Backbones whose forward reads a layer's ``weight`` directly (not by calling the
    layer) are not supported; every metaplus backbone calls its layers.
    """
    wrapped = transformed_layers(model)
    inside = {f"{name}.layer" for name in wrapped}
    for name, layer in linear_maps(model).items():
        if name in inside:
            continue
        if not name:
            raise TypeError("insert_transforms needs a backbone that contains its linear maps, not a bare layer")
        parent_name, _, attribute = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, attribute, Transformed(layer))  # nn.Sequential/ModuleList accept string indices
    return transformed_layers(model)


def transform_parameter_names(model: nn.Module) -> set[str]:
    """Names of every T parameter (meta-learned only, never adapted in the inner loop)."""
    return {
        f"{name}.transform.{p}"
        for name, m in transformed_layers(model).items()
        for p, _ in m.transform.named_parameters()
    }
