"""Config errors and value checks: the leaf every layer (nn/, data/, inner/, algorithms/) imports.

Constructors call :func:`check` and its variants on their own arguments, so a bad value fails before
training with ``key=value is invalid: must be <allowed>``; :func:`metaplus.config.instantiate_group`
prefixes the key with its group. Nothing here imports Hydra or OmegaConf: ``from metaplus.nn import
Conv4`` stays a torch-only import.
"""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """A config value or key that cannot work. ``key`` is dotted relative to its group."""

    def __init__(self, key: str, message: str):
        self.key, self.detail = key, message
        super().__init__(f"{key}: {message}")

    def within(self, group: str) -> ConfigError:
        return ConfigError(f"{group}.{self.key}", self.detail)


def check(key: str, value: Any, ok: bool, allowed: str) -> None:
    """Raise ``ConfigError`` unless ``ok``: ``key=value is invalid: must be <allowed>``."""
    if not ok:
        raise ConfigError(key, f"{value!r} is invalid: must be {allowed}")


def check_int(key: str, value: Any, minimum: int) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    check(key, value, ok, f"an integer >= {minimum}")


def check_positive(key: str, value: Any) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
    check(key, value, ok, "a number > 0")


def check_image_shape(key: str, value: Any) -> None:
    """An image backbone's ``input_shape``: [channels, height, width] of positive integers."""
    check(
        key,
        value,
        len(value) == 3 and all(isinstance(d, int) and d > 0 for d in value),
        "[channels, height, width] of positive integers",
    )


def check_choice(key: str, value: Any, choices) -> None:
    check(key, value, value in choices, f"one of {sorted(choices)}")


def metric_name(task: str) -> str:
    """``mse`` for regression, ``acc`` for classification (the metric of ``data.task``)."""
    check_choice("data.task", task, {"regression", "classification"})
    return "mse" if task == "regression" else "acc"
