"""Representation similarity before and after adaptation: "rapid learning or feature reuse?".

Raghu et al. (ANIL, 2020) compare each layer's activations on the same inputs in the network before
and after the inner loop: layers whose representation barely changes (similarity near 1) are
reused; layers that change are where adaptation happens (for MAML, mostly the head). The measure
here is linear CKA (Kornblith et al. 2019), invariant to orthogonal transforms and isotropic scaling
of either representation:

    CKA(X, Y) = ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F * ||Y_c^T Y_c||_F)

with X_c, Y_c the column-centred (n examples x features) activation matrices.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA between two representations of the same n examples, shapes (n, p) and (n, q)
    (more dimensions are flattened into features). 1 = the same up to rotation and scale."""
    x, y = x.detach().flatten(1).double(), y.detach().flatten(1).double()
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"both representations need the same examples: {x.shape[0]} vs {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise ValueError("CKA needs at least 2 examples")
    x, y = x - x.mean(dim=0), y - y.mean(dim=0)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norms = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if norms == 0:
        raise ValueError("a representation is constant over the examples: CKA is undefined")
    return float(cross / norms)


def default_layers(model: nn.Module) -> list[str]:
    """The modules that hold parameters themselves (convolutions, linear layers, norms), in order."""
    return [
        name for name, module in model.named_modules() if name and any(True for _ in module.parameters(recurse=False))
    ]


def layer_activations(model: nn.Module, x: Tensor, layers: Iterable[str], step: int = 0) -> dict[str, Tensor]:
    """Each named layer's output for input ``x`` (flattened to (n, features)), by forward hooks."""
    modules = dict(model.named_modules())
    layers = list(layers)
    unknown = [name for name in layers if name not in modules]
    if unknown:
        raise KeyError(f"no such layer(s) {unknown}; the model has {[n for n in modules if n]}")
    captured: dict[str, Tensor] = {}
    handles = [
        modules[name].register_forward_hook(
            lambda module, inputs, output, name=name: captured.__setitem__(name, output.detach().flatten(1))
        )
        for name in layers
    ]
    try:
        with torch.no_grad():
            model(x, step=step)
    finally:
        for handle in handles:
            handle.remove()
    return {name: captured[name] for name in layers}


def representation_similarity(
    before: nn.Module,
    after: nn.Module,
    x: Tensor,
    layers: Iterable[str] | None = None,
    step_before: int = 0,
    step_after: int = 0,
) -> dict[str, float]:
    """Linear CKA per layer between two networks of the same architecture on the same inputs."""
    layers = default_layers(before) if layers is None else list(layers)
    a = layer_activations(before, x, layers, step_before)
    b = layer_activations(after, x, layers, step_after)
    return {name: linear_cka(a[name], b[name]) for name in layers}


def adaptation_similarity(learner, task, steps: int, layers: Iterable[str] | None = None) -> dict[str, float]:
    """Per-layer CKA between ``learner.backbone`` and its adaptation on ``task``'s support set after
    ``steps`` inner steps, measured on the task's query inputs (as the ANIL paper)."""
    with torch.enable_grad():
        adapted = learner.adapt(task, steps, first_order=True)
    return representation_similarity(
        learner.backbone, adapted, task.query_x, layers, step_before=0, step_after=max(steps - 1, 0)
    )
