"""Loggers and callbacks from the ``logger`` and ``callbacks`` config groups.

W&B runs get the resolved config, tags (algorithm, dataset, user tags) and, inside a Hydra multirun,
a group named after the sweep directory, so a dashboard groups a sweep without manual work.
"""
from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from metaplus.config import instantiate_group


def multirun_group() -> str | None:
    """The sweep directory's name inside a Hydra multirun, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    return Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None


# MAML++'s switches (metaplus.algorithms.maml): each one that is on becomes a tag of its own.
SWITCHES = ("msl", "da", "bnrs", "bnwb", "lslr", "ca")


def run_tags(cfg: DictConfig) -> list[str]:
    """Algorithm, dataset, the ablation variant (``variant``, set by conf/ablation/*) and the MAML++
    switches that are on, then the user's tags: a dashboard filters an ablation grid by them."""
    tags = [cfg.algo.name, cfg.data.name, cfg.get("variant")]
    tags += [switch for switch in SWITCHES if cfg.algo.get(switch) is True]
    tags += list(cfg.get("tags") or [])
    return list(dict.fromkeys(str(tag) for tag in tags if tag))  # W&B tags are a set: keep the first of each


def run_name(node: DictConfig, cfg: DictConfig) -> str | None:
    """The W&B run name; inside an ablation the variant leads it, so runs of a group tell apart."""
    name = node.get("name")
    return f"{cfg.variant}-{name}" if cfg.get("variant") and name else name


def build_loggers(cfg: DictConfig) -> list[Logger]:
    loggers = []
    for key, node in (cfg.get("logger") or {}).items():
        if key == "wandb":
            group = node.get("group") or multirun_group()
            loggers.append(instantiate_group(node, f"logger.{key}", group=group, tags=run_tags(cfg),
                                             name=run_name(node, cfg)))
        else:
            loggers.append(instantiate_group(node, f"logger.{key}"))
    return loggers


def build_callbacks(cfg: DictConfig, with_loggers: bool) -> list[Callback]:
    callbacks = [instantiate_group(node, f"callbacks.{key}") for key, node in (cfg.get("callbacks") or {}).items()
                 if node is not None]
    if (cfg.get("trainer") or {}).get("enable_progress_bar") is False:
        # Lightning refuses a progress-bar callback when the bar is off: the switch alone turns it off.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if with_loggers:  # the outer learning rate is worth seeing whenever something records it
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    return callbacks


@rank_zero_only  # under DDP only rank 0 owns a real W&B run
def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)
        if isinstance(logger, WandbLogger):
            logger.experiment.config.update({"tags": run_tags(cfg)}, allow_val_change=True)


@rank_zero_only
def finish_loggers(loggers: list[Logger], metrics: dict) -> None:
    """Record the final metrics in each W&B run's summary and close it (one W&B run per job, also in
    a multirun that executes several jobs in one process)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            logger.experiment.summary.update(summary)
            logger.experiment.finish()
