"""Which parameters are which: derived from the model, never hard-coded per backbone."""

from __future__ import annotations

from torch import nn


def head_parameter_names(model: nn.Module) -> set[str]:
    """Names of the head's parameters: ``model.head`` if present, else the last module with parameters."""
    if isinstance(getattr(model, "head", None), nn.Module):
        return {f"head.{n}" for n, _ in model.head.named_parameters()}
    owners = [name for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    if not owners:
        raise ValueError(f"{type(model).__name__} has no parameters, so it has no head")
    last = owners[-1]
    return {f"{last}.{n}" if last else n for n, _ in model.get_submodule(last).named_parameters(recurse=False)}
