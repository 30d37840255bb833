"""One run: build everything from the config, fit, evaluate the best checkpoint, write results.json.

``train.py`` is a thin Hydra wrapper around :func:`run`; tests and notebooks call :func:`run` with a
config composed by Hydra's compose API.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from metaplus.algorithms.base import refuse_fp16_inner_loop
from metaplus.api import checkpoint_config
from metaplus.callbacks.checkpoint_io import checkpoint_damage
from metaplus.config import instantiate_group
from metaplus.devices import check_accelerator, describe_devices
from metaplus.ensemble import evaluate_ensemble, top_k_from_callback, top_k_from_directory
from metaplus.errors import ConfigError, check, check_choice, check_int
from metaplus.loggers import build_callbacks, build_loggers, finish_loggers, log_config
from metaplus.nn.init_from import build_backbone
from metaplus.presets import describe as describe_preset
from metaplus.presets import preset_info, row_name
from metaplus.results import portable_path, write_results
from metaplus.runlock import LOCK_NAME, one_process_per_run_directory
from metaplus.threads import configure_run_threads

log = logging.getLogger("metaplus")


def build(cfg: DictConfig) -> dict[str, Any]:
    """Instantiate datamodule, backbone, learner, loggers, callbacks and trainer (no training yet)."""
    check_int("seed", cfg.seed, 0)
    check_int("ensemble_top_k", cfg.ensemble_top_k, 0)
    check(
        "ckpt_path",
        cfg.ckpt_path,
        cfg.ckpt_path is None or Path(cfg.ckpt_path).is_file() or (not cfg.train and Path(cfg.ckpt_path).is_dir()),
        "an existing checkpoint file, a run's checkpoint directory (with train=false), or null",
    )
    check("train", cfg.train, cfg.train or cfg.ckpt_path is not None, "true unless ckpt_path names a checkpoint")
    check_choice("resume", cfg.get("resume", "auto"), {"auto", "never"})
    check_accelerator(cfg.trainer)  # GPUs asked for and none usable: say so now, not train on the CPU
    refuse_fp16_inner_loop(cfg.trainer.get("precision"))  # on the CPU Lightning would silently swap in bf16
    datamodule = instantiate_group(cfg.data, "data")
    # Build the sources now: bad source settings and missing datasets fail before any training.
    datamodule.setup("fit" if cfg.train else "test")
    backbone = build_backbone(cfg.model)
    learner = instantiate_group(cfg.algo, "algo", backbone=backbone, task_type=datamodule.task)
    loggers = build_loggers(cfg)
    callbacks = build_callbacks(cfg)
    trainer = instantiate_group(
        cfg.trainer, "trainer", logger=loggers or False, callbacks=callbacks, **ddp_overrides(cfg.trainer, learner)
    )
    # Before any process is launched: each rank must adapt the same number of tasks.
    check(
        "data.meta_batch_size",
        datamodule.meta_batch_size,
        datamodule.meta_batch_size % trainer.world_size == 0,
        f"divisible by the number of processes ({trainer.world_size} = devices x nodes)",
    )
    return dict(datamodule=datamodule, learner=learner, trainer=trainer, loggers=loggers)


def ddp_overrides(trainer_cfg: DictConfig, learner) -> dict[str, Any]:
    """Plain DDP requires a gradient for every parameter in every step; a learner that may leave some
    without one (``may_leave_parameters_unused``, e.g. pretrain's episode head) gets DDP's search for
    unused parameters instead. Other learners keep plain DDP (no extra graph traversal per step)."""
    if trainer_cfg.get("strategy") == "ddp" and learner.may_leave_parameters_unused():
        return {"strategy": "ddp_find_unused_parameters_true"}
    return {}


@one_process_per_run_directory  # a second process in the same run directory stops before touching it
def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and/or test as the config says; return the final metrics (also in results.json)."""
    start = time.time()
    output_dir = Path(cfg.paths.output_dir)
    try:
        cfg = checkpoint_config(cfg)  # train=false: the checkpoint's run's config, the command line winning
        check_int("seed", cfg.seed, 0)
        threads = configure_run_threads(cfg)  # before any tensor work: each process gets its share of the cores
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        preset_line = describe_preset(cfg)
        parts = build(cfg)
    except Exception:  # bad config or missing data: nothing half-written stays behind
        remove_if_empty(output_dir)
        raise
    datamodule, learner, trainer = parts["datamodule"], parts["learner"], parts["trainer"]
    if trainer.is_global_zero:
        announce(preset_line, output_dir)
        announce(start_line(cfg, trainer, threads, output_dir), output_dir)
    log_config(parts["loggers"], cfg)

    ckpt, ensemble = cfg.ckpt_path, []
    if ckpt is not None and Path(ckpt).is_dir():  # evaluate a run's checkpoints: the best one (+ top-k)
        ensemble = top_k_from_directory(Path(ckpt), max(cfg.ensemble_top_k, 1), cfg.monitor_mode)
        ckpt = str(ensemble[0][0])
    if cfg.train:
        trainer.fit(learner, datamodule=datamodule, ckpt_path=resume_checkpoint(cfg, trainer))
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        ckpt = best or None
        if trainer.checkpoint_callback is not None:
            ensemble = top_k_from_callback(trainer.checkpoint_callback, cfg.ensemble_top_k, cfg.monitor_mode)
    metrics: dict[str, Any] = {}
    if cfg.test:
        # The validation score of the evaluated checkpoint, then its test score on the fixed episodes.
        # Each returns its logged metrics (one dict per dataloader); the curves are lists, not logged.
        members = ensemble[: cfg.ensemble_top_k]
        # The tested checkpoint is normally the ensemble's first member: its test predictions are kept.
        reuse = bool(members) and ckpt is not None and Path(members[0][0]).resolve() == Path(ckpt).resolve()
        learner.test_predictions = None
        for stage, evaluate in (("val", trainer.validate), ("test", trainer.test)):
            if stage == "test" and reuse:
                learner.test_predictions = {}
            for logged in evaluate(learner, datamodule=datamodule, ckpt_path=ckpt, verbose=False):
                metrics.update(logged)
            metrics.update(learner.adaptation_curves.get(stage, {}))
        if cfg.ensemble_top_k:
            known, learner.test_predictions = learner.test_predictions, None
            metrics.update(evaluate_ensemble(learner, datamodule, members, first_member_predictions=known))
    metrics["monitor"] = cfg.monitor
    metrics["best_checkpoint"] = str(ckpt) if ckpt else None
    if trainer.is_global_zero:
        config = OmegaConf.to_container(cfg, resolve=True)
        extra = {
            "global_step": trainer.global_step,
            "epochs": trainer.current_epoch,
            "warnings": run_warnings(trainer),
            "data_classes": datamodule.class_lists() or None,
            "device": describe_devices(trainer),
        }
        path = write_results(
            output_dir,
            metrics,
            config,
            cfg.seed,
            time.time() - start,
            extra={k: v for k, v in {**extra, "preset": preset_info(cfg)}.items() if v is not None},
        )
        print_summary(cfg, metrics, path, extra["warnings"])
    finish_loggers(parts["loggers"], metrics, learner)
    return metrics


def resume_checkpoint(cfg: DictConfig, trainer: L.Trainer) -> str | None:
    """``ckpt_path`` if given; else, with ``resume: auto``, the run directory's own ``last.ckpt``.
    A damaged ``last.ckpt`` (e.g. a truncated copy) stops the run naming it and the ways out."""
    callback = trainer.checkpoint_callback
    if cfg.ckpt_path is not None or cfg.get("resume", "auto") == "never" or callback is None or not callback.dirpath:
        return cfg.ckpt_path
    last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
    if not last.is_file():
        return None
    damage = checkpoint_damage(last)
    if damage is not None:
        older = sorted(
            (p for p in last.parent.glob(f"*{callback.FILE_EXTENSION}") if p != last),
            key=lambda p: p.stat().st_mtime,
            reverse=True,
        )
        readable = next((p for p in older if checkpoint_damage(p) is None), None)
        way_out = f", or continue from an older checkpoint: ckpt_path={readable}" if readable else ""
        raise ConfigError(
            "resume",
            f"auto cannot continue from {last}: the file is damaged ({damage}). Start over with resume=never{way_out}",
        )
    log.warning(f"resume: auto: continuing from {last} (resume=never starts over)")
    return str(last)


def run_warnings(trainer: L.Trainer) -> list[str]:
    """What callbacks found wrong with the run (``run_warnings`` lists, e.g. metaplus.callbacks.Divergence)."""
    return [w for callback in trainer.callbacks for w in getattr(callback, "run_warnings", [])]


def objective(cfg: DictConfig, metrics: dict[str, Any]) -> float | None:
    """The value Hydra sweepers optimise: the monitored validation metric of the best checkpoint."""
    value = metrics.get(cfg.monitor)
    return None if value is None else float(value)


def remove_if_empty(output_dir: Path) -> None:
    """A run that failed on its config leaves no directory behind (only Hydra's own files were there)."""
    if not output_dir.is_dir():
        return
    leftovers = [p for p in output_dir.iterdir() if p.name not in {".hydra", "train.log", LOCK_NAME}]
    if not leftovers:
        shutil.rmtree(output_dir, ignore_errors=True)


def announce(text: str, output_dir: Path) -> None:
    """A line for the console that also belongs in the run's log: logged where Hydra gave the run a
    log file (train.log in the run directory; its console handler prints it too), else printed
    (compose API: tests, notebooks)."""
    run_dir = Path(output_dir).resolve()
    if any(
        isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == run_dir
        for handler in logging.getLogger().handlers
    ):
        log.info(text)
    else:
        print(text, flush=True)


def start_line(cfg: DictConfig, trainer: L.Trainer, threads: int, output_dir: Path) -> str:
    """What runs, in one line: algorithm, data row, backbone, device(s), precision, threads, run directory."""
    backbone = str(cfg.model.get("_target_", "?")).rsplit(".", 1)[-1]
    device = describe_devices(trainer)  # the same description results.json records
    devices = f"{device['processes']} x {device['type']} ({device['name']})"
    return (
        f"run: {cfg.algo.name} on {cfg.data.name} {row_name(cfg.data)}, backbone {backbone}, {devices}, "
        f"precision {device['precision']}, {threads} thread{'s' if threads != 1 else ''} per process, "
        f"run directory {portable_path(str(Path(output_dir).absolute()))}"
    )


def print_summary(cfg: DictConfig, metrics: dict[str, Any], path: Path, warnings: list[str] = ()) -> None:
    metric = "mse" if cfg.data.task == "regression" else "acc"
    lines = [f"metaplus | algo={cfg.algo.name} data={cfg.data.name} seed={cfg.seed}"]
    for stage in ("val", "test"):
        key = f"{stage}/{metric}"
        if key in metrics:
            n = int(metrics[f"{stage}/episodes"])
            curve = metrics.get(f"{key}_by_step")  # step 0 (before adaptation) .. the last step
            steps = len(curve) - 1 if curve else cfg.algo.get("test_inner_steps")
            n0 = int(metrics.get(f"{stage}/step0_episodes", n))
            on = f" on the first {n0}" if n0 < n else ""
            lines.append(
                f"  {key:9s} = {metrics[key]:.4f} ± {metrics[key + '_ci95']:.4f} after {steps} inner steps "
                f"(95% CI, {n} episodes; before adaptation {metrics[key + '_step0']:.4f}{on})"
            )
    key = f"test/{metric}_ensemble"
    if key in metrics:
        k = len(metrics["test/ensemble_checkpoints"])
        lines.append(
            f"  {key} = {metrics[key]:.4f} ± {metrics[key + '_ci95']:.4f} (95% CI; mean prediction of the "
            f"top {k} validation checkpoints)"
        )
    lines += [f"  WARNING: {warning}" for warning in warnings]
    # named as results.json names files: relative to the working directory (portable_path)
    checkpoints = Path(metrics["best_checkpoint"]).absolute().parent if metrics.get("best_checkpoint") else None
    lines.append(
        f"  results: {portable_path(str(path.absolute()))}"
        + (f"; checkpoints: {portable_path(str(checkpoints))}/" if checkpoints else "")
    )
    announce("\n".join(lines), path.parent)
