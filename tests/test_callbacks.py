"""The callbacks room: building callbacks from the config (progress bar switch, one record of the outer rate)."""

from __future__ import annotations

import csv

import pytest
from lightning.pytorch.callbacks import TQDMProgressBar

from metaplus.loggers import build_callbacks
from metaplus.run import run
from metaplus.testing import QUICK

QUICK_WITH_BAR_CALLBACK = [q for q in QUICK if q != "~callbacks.progress_bar"]


def test_progress_bar_switch_alone_turns_the_bar_off(make_config, tmp_path):
    cfg = make_config([*QUICK_WITH_BAR_CALLBACK, "trainer.enable_progress_bar=false"], output_dir=tmp_path / "off")
    assert "progress_bar" in cfg.callbacks, "the default callbacks still name the bar"
    assert not any(isinstance(c, TQDMProgressBar) for c in build_callbacks(cfg))
    metrics = run(cfg)  # Lightning refuses a progress-bar callback with enable_progress_bar=false
    assert metrics["test/episodes"] == 8


def test_progress_bar_callback_is_kept_when_the_bar_is_on(make_config, tmp_path):
    cfg = make_config([*QUICK_WITH_BAR_CALLBACK, "trainer.enable_progress_bar=true"], output_dir=tmp_path / "on")
    bars = [c for c in build_callbacks(cfg) if isinstance(c, TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == 10


def test_a_logged_run_records_the_outer_learning_rate_once(make_config, tmp_path):
    # train/meta_lr (logged by the learner every step) is the one record of the outer rate; Lightning's
    # LearningRateMonitor would repeat it as lr-Adam.
    cfg = make_config([*QUICK, "logger=csv"], output_dir=tmp_path / "logged")
    run(cfg)
    with open(tmp_path / "logged" / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert [c for c in columns if c.startswith("lr-")] == [], "the outer learning rate is logged twice"
    rates = [float(row["train/meta_lr"]) for row in rows if row.get("train/meta_lr")]
    assert rates == pytest.approx(
        [cfg.algo.meta_lr] * cfg.data.batches_per_epoch, rel=1e-6
    )  # QUICK: constant, every step
