"""The callbacks room: building callbacks from the config (progress bar switch)."""
from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar

from metaplus.testing import QUICK
from metaplus.loggers import build_callbacks
from metaplus.run import run

QUICK_WITH_BAR_CALLBACK = [q for q in QUICK if q != "~callbacks.progress_bar"]


def test_progress_bar_switch_alone_turns_the_bar_off(make_config, tmp_path):
    cfg = make_config([*QUICK_WITH_BAR_CALLBACK, "trainer.enable_progress_bar=false"], output_dir=tmp_path / "off")
    assert "progress_bar" in cfg.callbacks, "the default callbacks still name the bar"
    assert not any(isinstance(c, TQDMProgressBar) for c in build_callbacks(cfg, with_loggers=False))
    metrics = run(cfg)  # Lightning refuses a progress-bar callback with enable_progress_bar=false
    assert metrics["test/episodes"] == 8


def test_progress_bar_callback_is_kept_when_the_bar_is_on(make_config, tmp_path):
    cfg = make_config([*QUICK_WITH_BAR_CALLBACK, "trainer.enable_progress_bar=true"], output_dir=tmp_path / "on")
    bars = [c for c in build_callbacks(cfg, with_loggers=False) if isinstance(c, TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == 10
