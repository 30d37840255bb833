"""Use a trained learner as a library: ``metaplus.load(run_dir_or_ckpt)``.

    import metaplus
    learner = metaplus.load("outputs/runs/2026-12-02_12-00-00_maml_omniglot")   # or a .ckpt path
    support = learner.preprocess(["a0.png", "b0.png", ...])   # exactly the training preprocessing
    adapted = learner.adapt_to(support, torch.tensor([0, 1, ...]))
    labels = adapted.predict(learner.preprocess(["q1.png", "q2.png"]))   # score the query SET in one call

:func:`load` finds the checkpoint (a run directory's best checkpoint as results.json names it, else
``checkpoints/last.ckpt``; or a ``.ckpt`` path inside a run directory), rebuilds backbone and learner
from the run's own config (results.json's ``config``, else Hydra's ``.hydra/config.yaml``), loads the
weights and returns the learner in evaluation mode on ``device``, with
- ``learner.config``: the run's config (an OmegaConf DictConfig),
- ``learner.preprocess(images)``: the data source module's own ``preprocessing(...)``, a
  :class:`metaplus.data.preprocessing.Preprocessing` for images (Omniglot: grey, 28 px, inverted;
  mini-ImageNet, tieredImageNet, CUB: 84 px, ImageNet mean/std; CIFAR-FS, FC100: 32 px, CIFAR-100
  mean/std; image folders: their settings), a float-tensor conversion for sinusoid and polynomial,
- ``learner.adapt_to(x, y, steps=None)`` -> :class:`metaplus.algorithms.adapted.AdaptedLearner`.

:func:`fixed_episodes` yields the run's own fixed validation/test episodes, e.g. to check a loaded
learner against results.json.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from metaplus.algorithms.base import EpisodicLearner
from metaplus.config import instantiate_group
from metaplus.data.episodes import Task
from metaplus.errors import ConfigError, check_choice
from metaplus.nn.batchnorm import STATS_MODES, per_step_batchnorms
from metaplus.nn.init_from import build_backbone
from metaplus.resolvers import register_resolvers
from metaplus.results import expand_portable


class RunNotFoundError(FileNotFoundError):
    """No checkpoint or no config where :func:`load` looked; the message lists where that was."""


def load(
    run_dir_or_ckpt: str | os.PathLike, device: str | torch.device = "cpu", bn_stats: str | None = None
) -> EpisodicLearner:
    """The trained learner of a run directory or checkpoint file, ready for ``adapt_to``/``predict``.

    ``bn_stats``: ``None`` keeps the run's batch-norm mode; ``"running"`` normalises with the stored
    running statistics (only where the run kept them: ``algo.bn_stats=running`` or ``algo.bnrs=true``),
    so predictions no longer depend on the batch; ``"batch"`` uses batch statistics always.
    """
    ckpt, run_dir = find_checkpoint(Path(run_dir_or_ckpt))
    cfg = run_config(run_dir)
    backbone = build_backbone(cfg.model, initialise=False)  # the checkpoint holds the weights
    learner = instantiate_group(cfg.algo, "algo", backbone=backbone, task_type=cfg.data.task)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    build_checkpoint_only_parts(learner, state)
    learner.load_state_dict(state)
    learner.to(device).eval()
    if bn_stats is not None:
        set_batchnorm_stats(learner, bn_stats)
    learner.config = cfg
    learner.checkpoint_path = ckpt
    learner.preprocess = preprocessing(cfg)
    return learner


# -- finding the run -----------------------------------------------------------------------------------
def find_checkpoint(path: Path) -> tuple[Path, Path]:
    """(checkpoint, run directory) of a run directory or of a checkpoint file inside one."""
    if path.is_file():
        run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        return path, run_dir
    if not path.is_dir():
        raise RunNotFoundError(f"{path} is neither a run directory nor a checkpoint file")
    looked = []
    results = path / "results.json"
    if results.is_file():
        best = json.loads(results.read_text()).get("best_checkpoint")
        if best:
            # results.json names it relative to the run directory (older runs: by an absolute path of the
            # machine that trained, so fall back to the file of that name in this run directory).
            for candidate in (path / best, path / "checkpoints" / Path(best).name):
                if candidate.is_file():
                    return candidate, path
                looked.append(str(candidate))
    last = path / "checkpoints" / "last.ckpt"
    if last.is_file():
        return last, path
    looked.append(str(last))
    raise RunNotFoundError(f"no checkpoint in run directory {path}: looked for {', '.join(looked)}")


def run_config(run_dir: Path) -> DictConfig:
    """The run's config: results.json's (resolved) ``config``, else Hydra's ``.hydra/config.yaml``."""
    register_resolvers()
    results = run_dir / "results.json"
    if results.is_file():
        config = json.loads(results.read_text()).get("config")
        if config:  # its paths are portable (metaplus.results.portable): expand $METAPLUS_DATA again
            return OmegaConf.create(expand_portable(config))
    hydra_config = run_dir / ".hydra" / "config.yaml"
    if not hydra_config.is_file():
        raise RunNotFoundError(
            f"no config for the run in {run_dir}: looked for {results} ('config') and "
            f"{hydra_config}; load needs the run directory the checkpoint was written in"
        )
    cfg = OmegaConf.load(hydra_config)
    with open_dict(cfg):  # Hydra's runtime values are not available outside the run: fill them in
        cfg.paths.output_dir = str(run_dir)
        cfg.paths.root_dir = os.getcwd()
    OmegaConf.resolve(cfg)
    return cfg


# What a checkpoint's run decides for its evaluation: the learner, its backbone, the data and their
# published setting. How to run (trainer, loggers, callbacks, paths) is this command's.
RUN_KEYS = ("algo", "model", "data", "preset", "variant", "ensemble_top_k")
# A command-line choice of these groups must be the run's: another one builds tensors the checkpoint does
# not fit. Each is identified by the key its configs set.
IDENTITY = {"algo": "algo.name", "data": "data.name", "model": "model._target_"}


def checkpoint_config(cfg: DictConfig) -> DictConfig:
    """The config that evaluates ``ckpt_path`` (``train=false``): ``cfg`` with ``algo``, ``model``,
    ``data`` and ``preset`` taken from the checkpoint's run (:func:`run_config`, as :func:`load`
    rebuilds the learner), then every value this command line gives under them (``data.test_episodes=100``,
    and the keys of a global choice such as ``debug=fast``) set again, so the command line wins.
    ``cfg`` unchanged when training or without a checkpoint.

    A command-line ``algo=``/``data=``/``model=`` other than the run's, or a checkpoint without its
    run's config and without ``algo=`` and ``data=``, is a ConfigError naming what to change."""
    ckpt = Path(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    if cfg.train or ckpt is None or not ckpt.exists():  # a missing checkpoint is reported by run.build
        return cfg
    run_dir = (ckpt.parent if ckpt.name == "checkpoints" else ckpt) if ckpt.is_dir() else find_checkpoint(ckpt)[1]
    overrides, choices = command_line()
    given = {o.key_or_group for o in overrides if o.key_or_group in choices}
    try:
        ran = run_config(run_dir)
    except RunNotFoundError:
        missing = [group for group in ("algo", "data") if group not in given]
        if missing:
            raise ConfigError(
                "ckpt_path",
                f"{ckpt} has no run config beside it (no results.json or .hydra/config.yaml "
                f"in {run_dir}), so the algorithm and data it was trained with are "
                f"unknown: add {' '.join(g + '=<its ' + g + '>' for g in missing)} (and "
                f"any other setting the run changed) to the command",
            ) from None
        return cfg  # the command line says what the run was
    for group, key in IDENTITY.items():
        mine, theirs = OmegaConf.select(cfg, key), OmegaConf.select(ran, key)
        if group in given and theirs is not None and mine != theirs:
            name = str(theirs).rsplit(".", 1)[-1].lower()  # metaplus.nn.Conv4 -> conv4, its choice's name
            raise ConfigError(
                group,
                f"{choices[group]!r} is not the checkpoint's: its run {run_dir} trained with "
                f"{group}={name}; drop {group}= to evaluate with the run's config",
            )
    merged = cfg.copy()
    with open_dict(merged):
        for key in RUN_KEYS:
            if key in ran:
                merged[key] = ran[key]
        for override in overrides:  # this command's own values under those keys win again
            key = override.key_or_group
            if key in IDENTITY:
                continue
            for name in group_keys(key, choices[key]) if key in given else [key]:
                if name.split(".", 1)[0] not in RUN_KEYS:
                    continue  # already this command's
                if override.is_delete() and key not in given:
                    parent, _, leaf = name.rpartition(".")
                    node = OmegaConf.select(merged, parent)
                    if isinstance(node, DictConfig) and leaf in node:
                        del node[leaf]
                else:
                    OmegaConf.update(merged, name, OmegaConf.select(cfg, name), merge=False, force_add=True)
    return merged


def command_line() -> tuple[list, dict]:
    """(this Hydra job's parsed command-line overrides, its group choices); empty outside a Hydra job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not HydraConfig.initialized():
        return [], {}
    hydra_cfg = HydraConfig.get()
    overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    return overrides, dict(hydra_cfg.runtime.choices)


def group_keys(group: str, choice: str) -> list[str]:
    """The config keys a group choice sets: the group's own node, or for a global group
    (``# @package _global_``, e.g. ``debug``) every leaf key its file sets."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader() if GlobalHydra.instance().is_initialized() else None
    loaded = (
        loader.repository.load_config(f"{group}/{choice}") if loader is not None and isinstance(choice, str) else None
    )
    if loaded is None or loaded.header.get("package") != "_global_":
        return [group]
    node = OmegaConf.masked_copy(loaded.config, [k for k in loaded.config if k != "defaults"])
    return leaf_keys(node)


def leaf_keys(node: DictConfig, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        name = f"{prefix}{key}"
        keys += leaf_keys(value, name + ".") if isinstance(value, DictConfig) else [name]
    return keys


def build_checkpoint_only_parts(learner: EpisodicLearner, state: dict) -> None:
    """Parts a learner builds from its datamodule during ``setup`` (the pre-training baseline's
    all-classes head), rebuilt from the checkpoint's shapes."""
    weight = state.get("pretrain_head.weight")
    build = getattr(learner, "build_pretrain_head", None)
    if weight is not None and build is not None and getattr(learner, "pretrain_head", None) is None:
        build(weight.shape[0])


def set_batchnorm_stats(learner: EpisodicLearner, mode: str) -> None:
    check_choice("bn_stats", mode, set(STATS_MODES))
    layers = per_step_batchnorms(learner.backbone)
    if mode == "running":
        missing = [name for name, layer in layers.items() if layer.running_mean is None]
        if not layers or missing:
            raise ValueError(
                "bn_stats='running' needs running statistics, and this run kept none "
                f"({'no per-step batch-norm layer' if not layers else 'layers ' + ', '.join(missing)}): "
                "it trained with algo.bn_stats=batch and algo.bnrs=false, so its predictions depend "
                "on the batch; score whole query sets with predict(), as evaluation does"
            )
    for layer in layers.values():
        layer.stats = mode


# -- data ----------------------------------------------------------------------------------------------
def preprocessing(cfg: DictConfig) -> Callable:
    """The run's data source's ``preprocessing(...)``: the module-level function every source module
    defines (images: a :class:`metaplus.data.preprocessing.Preprocessing`; numbers: a float-tensor conversion),
    called with the matching keys of ``data.source``. A source module without one is an error, never a
    silent stand-in: a learner fed differently prepared inputs answers wrongly without saying so."""
    source = cfg.data.get("source")
    target = source.get("_target_") if source is not None else None
    if not target:
        raise ConfigError(
            "data.source._target_", "is missing from the run's config: cannot tell how its inputs were prepared"
        )
    module_name = target.rsplit(".", 1)[0]
    make = getattr(importlib.import_module(module_name), "preprocessing", None)
    if not callable(make):
        raise ConfigError(
            "data.source._target_",
            f"{target!r}: its module {module_name} defines no module-level "
            f"preprocessing(...) (every data source module must: it is what "
            f"metaplus.load's learner.preprocess returns)",
        )
    accepted = inspect.signature(make).parameters
    return make(**{key: value for key, value in source.items() if key in accepted})


def fixed_episodes(config: DictConfig, split: str = "test", episodes: int | None = None) -> Iterator[Task]:
    """The run's fixed ``split`` episodes (the ones results.json scores), one :class:`Task` at a time."""
    check_choice("split", split, {"val", "test"})
    datamodule = instantiate_group(config.data, "data")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()
    seen = 0
    for batch in loader:
        for b in range(len(batch)):
            if episodes is not None and seen >= episodes:
                return
            yield batch[b]
            seen += 1
