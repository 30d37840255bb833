"""The config ``train.py`` composes, built in-process with Hydra's compose API.

Scripts, tests and notebooks that run :func:`metaplus.run.run` (or only read a preset) without
going through ``train.py``'s command line call :func:`compose_config` instead of repeating Hydra's
initialise / compose / HydraConfig boilerplate.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, open_dict

# train.py's ``config_path="conf"``: the config tree beside the package in a checkout.
CONFIG_DIR = Path(__file__).resolve().parents[1] / "conf"


def compose_config(
    overrides: Sequence[str] = (),
    output_dir: str | Path | None = None,
    *,
    cwd: str | Path | None = None,
    keep_hydra: bool = False,
    config_dir: str | Path = CONFIG_DIR,
) -> DictConfig:
    """The config ``python train.py <overrides>`` would run, ready for :func:`metaplus.run.run`.

    ``output_dir`` becomes the run directory (``hydra.runtime.output_dir``, else Hydra's default under
    the current directory) and ``cwd`` the ``paths.root_dir`` (``hydra.runtime.cwd``). The Hydra node is
    registered with ``HydraConfig`` so ``${hydra:...}`` interpolations resolve, then dropped from the
    returned config as ``train.py``'s job config has none; ``keep_hydra=True`` keeps it (launcher and
    sweep settings). The OmegaConf resolvers are registered first.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from metaplus.resolvers import register_resolvers

    config_dir = Path(config_dir).resolve()
    if not (config_dir / "config.yaml").is_file():
        raise FileNotFoundError(
            f"no Hydra config tree at {config_dir} (config.yaml missing): compose_config needs "
            "the conf/ folder of a metaplus checkout, or config_dir= pointing at one"
        )
    register_resolvers()
    GlobalHydra.instance().clear()  # another initialisation (a notebook cell run twice) would refuse to start
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    with open_dict(cfg):
        if output_dir is not None:
            cfg.hydra.runtime.output_dir = str(output_dir)
        if cwd is not None:
            cfg.hydra.runtime.cwd = str(cwd)
    HydraConfig.instance().set_config(cfg)
    if not keep_hydra:
        with open_dict(cfg):
            del cfg["hydra"]
    return cfg
