"""metaplus: gradient-based meta-learning on Lightning + Hydra.

``metaplus.load(run_dir_or_ckpt, device="cpu")`` returns a trained learner (see :mod:`metaplus.api`).
"""


def load(run_dir_or_ckpt, device="cpu", bn_stats=None):
    """The trained learner of a run directory or checkpoint: :func:`metaplus.api.load`."""
    from metaplus.api import load as load_run  # imported on use: `import metaplus` stays light

    return load_run(run_dir_or_ckpt, device=device, bn_stats=bn_stats)
