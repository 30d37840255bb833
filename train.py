"""metaplus entry point.

    python train.py                                   # MAML on sinusoid (offline default)
    python train.py algo=fomaml data.shots=10         # any override
    python train.py -m algo=maml,fomaml seed=1,2,3    # Hydra multirun: one directory per job

Returns the monitored validation metric so Hydra sweepers (e.g. Optuna) can optimise it.
"""
import hydra
from omegaconf import DictConfig

from metaplus.config import register_resolvers

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from metaplus.run import objective, run  # heavy imports after Hydra has parsed the command line

    return objective(cfg, run(cfg))


if __name__ == "__main__":
    main()
