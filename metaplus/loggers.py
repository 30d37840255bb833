"""Loggers and callbacks from the ``logger`` and ``callbacks`` config groups.

W&B runs get the resolved config, tags (algorithm, dataset, user tags) and, inside a Hydra multirun,
a group named after the sweep directory, so a dashboard groups a sweep without manual work. At the
end of a run its summary holds the final metrics and :func:`dashboard` logs the adaptation curve,
learned inner learning rates and MT-net mask fractions of the evaluated checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from metaplus.config import instantiate_group
from metaplus.mamlpp_switches import SWITCHES


def multirun_group() -> str | None:
    """The sweep directory's name inside a Hydra multirun, else None."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except (ImportError, ValueError):
        return None
    return Path(hydra_cfg.sweep.dir).name if hydra_cfg.mode == RunMode.MULTIRUN else None


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
            loggers.append(
                instantiate_group(node, f"logger.{key}", group=group, tags=run_tags(cfg), name=run_name(node, cfg))
            )
        else:
            loggers.append(instantiate_group(node, f"logger.{key}"))
    return loggers


def build_callbacks(cfg: DictConfig) -> list[Callback]:
    # No LearningRateMonitor: EpisodicLearner.training_step logs the same value (the outer optimizer's one
    # param group's lr) as train/meta_lr at every step, also without a logger; the monitor repeated it once
    # per epoch as lr-Adam (lr-SGD for Reptile), which misses lr_interval=step schedules within an epoch.
    callbacks = [
        instantiate_group(node, f"callbacks.{key}")
        for key, node in (cfg.get("callbacks") or {}).items()
        if node is not None
    ]
    if (cfg.get("trainer") or {}).get("enable_progress_bar") is False:
        # Lightning refuses a progress-bar callback when the bar is off: the switch alone turns it off.
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    return callbacks


@rank_zero_only  # under DDP only rank 0 owns a real W&B run
def log_config(loggers: list[Logger], cfg: DictConfig) -> None:
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for logger in loggers:
        logger.log_hyperparams(resolved)
        if isinstance(logger, WandbLogger):
            logger.experiment.config.update({"tags": run_tags(cfg)}, allow_val_change=True)


def summary_metrics(metrics: dict) -> dict:
    """The numbers of results.json that a run's W&B summary shows (test metric, CI, step 0, episodes,
    ``test/acc_ensemble`` when an ensemble was evaluated, MT-net fractions, ...)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def dashboard(metrics: dict, learner=None) -> dict:
    """W&B objects for the run's dashboard, keyed as logged: the adaptation curve of the evaluated
    checkpoint as a line plot (``{stage}/adaptation_curve``, one per stage that computed it), the
    learned per-layer per-step inner learning rates (``inner_lr/table``, MAML++ LSLR) and MT-net's
    update fractions per layer (``mtnet/update_fraction_table`` and a bar chart)."""
    import wandb

    panels: dict = {}
    for key, curve in metrics.items():
        if not key.endswith("_by_step") or "_ci95_" in key:
            continue
        stage, metric = key[: -len("_by_step")].split("/", 1)
        cis = metrics.get(f"{stage}/{metric}_ci95_by_step") or [0.0] * len(curve)
        table = wandb.Table(
            columns=["inner_step", metric, "ci95", "low", "high"],
            data=[[k, m, c, m - c, m + c] for k, (m, c) in enumerate(zip(curve, cis))],
        )
        panels[f"{stage}/adaptation_curve"] = wandb.plot.line(
            table, "inner_step", metric, title=f"{stage} {metric} against inner steps (evaluated checkpoint)"
        )
    rates = getattr(learner, "learned_inner_lrs", lambda: {})()
    rows = [
        [name.split("/")[1], int(name.rsplit("/step", 1)[1]), value]
        for name, value in rates.items()
        if not name.startswith("inner_lr/mean/")
    ]
    if rows:
        panels["inner_lr/table"] = wandb.Table(columns=["parameter", "step", "inner_lr"], data=rows)
    fractions = [
        [key.rsplit("/", 1)[1], value]
        for key, value in metrics.items()
        if key.startswith("mtnet/update_fraction/") and isinstance(value, float)
    ]
    if fractions:
        table = wandb.Table(columns=["layer", "update_fraction"], data=fractions)
        panels["mtnet/update_fraction_table"] = table
        panels["mtnet/update_fraction_bar"] = wandb.plot.bar(
            table, "layer", "update_fraction", title="MT-net: fraction of units the masks update"
        )
    return panels


@rank_zero_only
def finish_loggers(loggers: list[Logger], metrics: dict, learner=None) -> None:
    """Record the final metrics in each W&B run's summary, log the dashboard's plots and tables of
    the evaluated checkpoint (:func:`dashboard`) and close the run (one W&B run per job, also in a
    multirun that executes several jobs in one process)."""
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            experiment = logger.experiment
            experiment.log(dashboard(metrics, learner))
            experiment.summary.update(summary_metrics(metrics))
            experiment.finish()
