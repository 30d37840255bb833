"""Config checking and instantiation: every bad value fails before training, naming its key.

Constructors call :func:`check` on their own arguments; :func:`instantiate_group` builds one
Hydra group (``algo``, ``data``, ...), rejects keys the target does not accept (with the allowed
ones listed), and prefixes any :class:`ConfigError` with the group so the message reads
``algo.inner_lr=-1 is invalid: must be > 0``.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value or key that cannot work. ``key`` is dotted relative to its group."""

    def __init__(self, key: str, message: str):
        self.key, self.detail = key, message
        super().__init__(f"{key}: {message}")

    def within(self, group: str) -> "ConfigError":
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


def check_choice(key: str, value: Any, choices) -> None:
    check(key, value, value in choices, f"one of {sorted(choices)}")


def accepted_keys(target: Any) -> set[str] | None:
    """Keyword names a callable accepts, or None if it takes ``**kwargs`` (anything goes).

    A class whose ``__init__`` forwards ``**shared`` to its base (the learners do: shared
    constructor arguments live once, in the base) accepts its own names plus the base's.
    """
    names: set[str] = set()
    owners = [k for k in target.__mro__ if "__init__" in vars(k)] if inspect.isclass(target) else [target]
    for owner in owners:
        params = inspect.signature(owner.__init__ if inspect.isclass(owner) else owner).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            return names
    return None


def check_keys(node: DictConfig, group: str, provided: tuple[str, ...] = ()) -> None:
    """Unknown keys in ``node`` (and nested ``_target_`` nodes) fail with the allowed ones listed."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return
    target = hydra.utils.get_class(node._target_) if "." in node._target_ else None
    allowed = accepted_keys(target) if target is not None else None
    for key, value in node.items():
        if key.startswith("_"):
            continue
        if allowed is not None and key not in allowed:
            near = difflib.get_close_matches(key, sorted(allowed), n=1)
            hint = f" (did you mean '{near[0]}'?)" if near else ""
            valid = ", ".join(sorted(allowed - set(provided)))
            raise ConfigError(f"{group}.{key}", f"unknown key{hint}; allowed keys: {valid}")
        if isinstance(value, DictConfig):
            check_keys(value, f"{group}.{key}")


def instantiate_group(node: DictConfig, group: str, /, **provided: Any) -> Any:
    """Instantiate one config group, turning any config problem into a ``ConfigError`` naming it."""
    check_keys(node, group, tuple(provided))
    try:
        return hydra.utils.instantiate(node, **provided, _convert_="all")
    except ConfigError as err:
        raise err.within(group) from None
    except hydra.errors.InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ConfigError):
            raise cause.within(group) from None
        raise


def metric_name(task: str) -> str:
    check_choice("data.task", task, {"regression", "classification"})
    return "mse" if task == "regression" else "acc"


def register_resolvers() -> None:
    """``${monitor:${data.task}}`` -> val/mse or val/acc; ``${monitor_mode:...}`` -> min or max;
    ``${preset_row:KEY}`` -> the published row's value (:mod:`metaplus.presets`)."""
    if not OmegaConf.has_resolver("monitor"):
        OmegaConf.register_new_resolver("monitor", lambda task: f"val/{metric_name(task)}")
        OmegaConf.register_new_resolver("monitor_mode", lambda task: "min" if metric_name(task) == "mse" else "max")
        # ModelCheckpoint keeps the top max(k, 1) validation checkpoints: the ensemble's members.
        OmegaConf.register_new_resolver("checkpoints_to_keep", lambda k: max(int(k), 1))
    from metaplus.presets import register  # presets import this module's errors

    register()
