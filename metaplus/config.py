"""Config instantiation: every bad key or value fails before training, naming it.

Constructors check their own arguments with :mod:`metaplus.errors` (the Hydra-free leaf);
:func:`instantiate_group` builds one Hydra group (``algo``, ``data``, ...), rejects keys the target
does not accept (with the allowed ones listed), and prefixes any :class:`ConfigError` with the group
so the message reads ``algo.inner_lr=-1 is invalid: must be > 0``. Resolvers: :mod:`metaplus.resolvers`;
composing the config as ``train.py`` does: :mod:`metaplus.compose`.
"""

from __future__ import annotations

import difflib
import inspect
from typing import Any

import hydra
from omegaconf import DictConfig

# Re-exported for code written before the split (errors and resolvers had their home here).
from metaplus.errors import ConfigError, check, check_choice, check_int, check_positive, metric_name  # noqa: F401
from metaplus.resolvers import register_resolvers  # noqa: F401


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
