"""Test session set-up (the shared dataset folder, offline W&B, the resolvers) and the config fixture.

Helpers shared by several tests live in :mod:`metaplus.testing` and :mod:`metaplus.compose`, imported
from there: tests import no other test module.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig

from metaplus.compose import compose_config
from metaplus.resolvers import register_resolvers
from metaplus.testing import shared_data_dir

# Point METAPLUS_DATA at ../shared/data when it is there and nothing else was chosen.
if "METAPLUS_DATA" not in os.environ and shared_data_dir() is not None:
    os.environ["METAPLUS_DATA"] = str(shared_data_dir())
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
register_resolvers()


@pytest.fixture
def make_config(tmp_path):
    """``make_config([...overrides])`` composes the real config with outputs under tmp_path."""

    def make(overrides: list[str] = (), output_dir: Path | None = None) -> DictConfig:
        return compose_config(list(overrides), output_dir or tmp_path / "run")

    return make


@pytest.fixture(scope="session")
def cache_dir(request, tmp_path_factory) -> Path:
    """A decoded-image cache that survives test sessions (pytest's own cache folder; a fresh temporary
    one when pytest runs with ``-p no:cacheprovider``)."""
    cache = getattr(request.config, "cache", None)
    return Path(cache.mkdir("metaplus-image-cache")) if cache else tmp_path_factory.mktemp("metaplus-image-cache")
