"""metaplus: gradient-based meta-learning on Lightning + Hydra.

``metaplus.load(run_dir_or_ckpt, device="cpu")`` returns a trained learner (see :mod:`metaplus.api`).

Importing the package (which every ``metaplus.*`` import does first) silences three messages of its
dependencies that no user of metaplus can act on, without touching the installed packages: Gym's
deprecation banner (learn2learn imports gym), Lightning's litlogger advertisement, and torch's
deprecation of ``LeafSpec``, which Lightning still uses. Real warnings are left alone.
"""

import contextlib
import importlib.util
import io
import logging
import sys
import warnings

GYM_NOTICE = "Gym has been unmaintained"  # the first words of gym_notices' banner for gym 0.26


def _import_gym_without_its_banner() -> None:
    """gym prints its banner to stderr when first imported (no switch turns it off): import it here
    with stderr captured, and pass on anything else it printed."""
    if "gym" in sys.modules or importlib.util.find_spec("gym") is None:
        return
    captured = io.StringIO()
    with contextlib.redirect_stderr(captured):
        try:
            import gym  # noqa: F401
        except Exception:  # learn2learn will report it where it really needs gym
            pass
    printed = captured.getvalue()
    if GYM_NOTICE in printed:
        # the banner is one block of lines starting with the notice; what came before it is kept
        printed = printed[: printed.index(GYM_NOTICE)]
    sys.stderr.write(printed)


class _DropLitloggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


# Lightning's rank-zero messages come from whichever of these loggers the installed packages name.
for _name in (
    "lightning.pytorch.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
):
    logging.getLogger(_name).addFilter(_DropLitloggerTip())
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning)
# Lightning warns that the learner's on_before_batch_transfer (reading episode indices while they are on the
# host) is used although a datamodule was passed: that is what is meant; the datamodule defines no such hook.
warnings.filterwarnings("ignore", message=r"You have overridden `on_before_batch_transfer` in `LightningModule` but")
_import_gym_without_its_banner()


def load(run_dir_or_ckpt, device="cpu", bn_stats=None):
    """The trained learner of a run directory or checkpoint: :func:`metaplus.api.load`."""
    from metaplus.api import load as load_run  # imported on use: `import metaplus` stays light

    return load_run(run_dir_or_ckpt, device=device, bn_stats=bn_stats)
