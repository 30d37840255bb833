"""metaplus entry point.

    python train.py                                   # MAML on sinusoid (offline default)
    python train.py algo=fomaml data.shots=10         # any override
    python train.py -m algo=maml,fomaml seed=1,2,3    # Hydra multirun: one directory per job

Returns the monitored validation metric so Hydra sweepers (e.g. Optuna) can optimise it.
A configuration error (metaplus.config.ConfigError) prints one line naming the key, its value and
what is allowed, and exits with status 2; HYDRA_FULL_ERROR=1 shows the traceback instead.
"""

import logging
import os
import sys

import hydra
from omegaconf import DictConfig

from metaplus.config import ConfigError, register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from metaplus.run import objective, run  # heavy imports after Hydra has parsed the command line

    logging.captureWarnings(True)  # warnings go through logging, so train.log holds them as the console shows them
    try:
        return objective(cfg, run(cfg))
    except ConfigError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"config error: {err}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
