"""The OmegaConf resolvers the config tree (conf/) interpolates; registered once per process."""

from __future__ import annotations

from omegaconf import OmegaConf

from metaplus import presets
from metaplus.errors import metric_name


def register_resolvers() -> None:
    """``${monitor:${data.task}}`` -> val/mse or val/acc; ``${monitor_mode:...}`` -> min or max;
    ``${checkpoints_to_keep:k}`` -> max(k, 1); ``${preset_row:KEY}`` -> the published row's value
    (:mod:`metaplus.presets`)."""
    if not OmegaConf.has_resolver("monitor"):
        OmegaConf.register_new_resolver("monitor", lambda task: f"val/{metric_name(task)}")
        OmegaConf.register_new_resolver("monitor_mode", lambda task: "min" if metric_name(task) == "mse" else "max")
        # ModelCheckpoint keeps the top max(k, 1) validation checkpoints: the ensemble's members.
        OmegaConf.register_new_resolver("checkpoints_to_keep", lambda k: max(int(k), 1))
    presets.register()
