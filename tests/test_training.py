"""End-to-end: real Lightning runs on sinusoid, results.json, loggers, multiruns, the CLI."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metaplus.algorithms import NonFiniteLossError
from metaplus.run import build, run
from metaplus.testing import QUICK, REPO, commands, recompute_test_metric

LEARN = [
    "trainer.max_epochs=3",
    "data.batches_per_epoch=100",
    "data.meta_batch_size=10",
    "data.val_episodes=50",
    "data.test_episodes=100",
    "algo.test_inner_steps=5",
    "algo.meta_lr=0.003",
]


def test_short_sinusoid_run_learns_to_adapt(make_config, tmp_path):
    cfg = make_config([*QUICK, *LEARN], output_dir=tmp_path / "trained")
    trained = run(cfg)
    # the reported numbers are the plain mean squared error over the 100 fixed episodes, recomputed
    after, before = recompute_test_metric(cfg, trained["best_checkpoint"])
    assert trained["test/mse"] == pytest.approx(after, rel=1e-5)
    assert trained["test/mse_step0"] == pytest.approx(before, rel=1e-5)
    untrained_parts = build(make_config([*QUICK, *LEARN], output_dir=tmp_path / "untrained"))
    (untrained,) = untrained_parts["trainer"].test(
        untrained_parts["learner"], datamodule=untrained_parts["datamodule"], verbose=False
    )

    after, before = trained["test/mse"], trained["test/mse_step0"]
    assert after < 0.9 * before, f"adaptation should help after meta-training: {before:.3f} -> {after:.3f}"
    assert after < 0.9 * untrained["test/mse"], (after, untrained["test/mse"])
    assert len(trained["test/mse_by_step"]) == 6 and trained["test/episodes"] == 100


def test_results_json_holds_metrics_config_and_versions(make_config, tmp_path):
    out = tmp_path / "r"
    metrics = run(make_config(QUICK, output_dir=out))
    results = json.loads((out / "results.json").read_text())
    for key in ("test/mse", "test/mse_ci95", "test/loss", "val/mse", "val/mse_ci95", "val/loss"):
        assert results[key] == pytest.approx(metrics[key])
    assert results["test/episodes"] == 8
    assert results["config"]["algo"]["name"] == "maml" and results["seed"] == 42
    assert {"torch", "lightning", "learn2learn", "hydra-core"} <= set(results["versions"])
    assert results["wall_time_s"] > 0
    # named relative to the run directory: results.json holds no absolute path of this machine
    assert not Path(results["best_checkpoint"]).is_absolute() and (out / results["best_checkpoint"]).is_file()
    assert not list(out.glob(".results.json.*")), "no temporary file may remain"


def test_fixed_test_episodes_do_not_depend_on_the_run_seed(make_config, tmp_path):

    def first_test_batch(seed):
        dm = build(make_config([*QUICK, f"seed={seed}"], output_dir=tmp_path / str(seed)))["datamodule"]
        dm.setup("test")
        return next(iter(dm.test_dataloader())), dm

    a, dm_a = first_test_batch(1)
    b, _ = first_test_batch(2)
    assert (a.support_x == b.support_x).all() and (a.query_y == b.query_y).all()
    dm_a.setup("fit")
    train = next(iter(dm_a.train_dataloader()))
    assert not (train.support_x == a.support_x[: len(train)]).all()


def test_nan_loss_stops_with_a_clear_error(make_config, tmp_path):
    cfg = make_config([*QUICK, "algo.inner_lr=1e12", "algo.inner_steps=3"], output_dir=tmp_path / "nan")
    with pytest.raises(NonFiniteLossError, match="inner_lr"):
        run(cfg)


def test_csv_and_tensorboard_loggers_write_metrics(make_config, tmp_path):
    out = tmp_path / "logs"
    run(make_config([*QUICK, "logger=[csv,tensorboard]"], output_dir=out))
    header = (out / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "val/mse", "test/mse_ci95"} <= set(header)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_offline_run_writes_its_files(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wb"
    run(make_config([*QUICK, "logger=wandb", "tags=[ablation]"], output_dir=out))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    logs = list(runs[0].glob("*.wandb"))
    assert logs, "the offline run log must exist"
    expected = (b"inner_lr", b"sinusoid", b"ablation", b"test/mse_ci95")
    deadline = time.time() + 60  # W&B's service process may still be flushing the file
    while True:
        content = logs[0].read_bytes()  # the run's records: resolved config, tags, metrics
        missing = [e for e in expected if e not in content]
        if not missing or time.time() > deadline:
            break
        time.sleep(1)
    assert not missing, f"{missing} not in {logs[0]} ({len(content)} bytes)"


def cli(*args, cwd=REPO, timeout=300):
    env = {**os.environ, "WANDB_MODE": "offline", "HYDRA_FULL_ERROR": "0"}
    return subprocess.run(
        [sys.executable, "train.py", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_multirun_writes_one_directory_per_job(tmp_path):
    """A multirun as typed, with Hydra's default sweep directory (which once failed to resolve)."""
    quick = [q for q in QUICK if not q.startswith("~")] + ["~callbacks.progress_bar"]
    proc = commands.train("-m", "seed=1,2", *quick, "logger=wandb", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = commands.only_directory(tmp_path / "outputs" / "multiruns")
    results = sorted(sweep.glob("*/results.json"))
    assert len(results) == 2
    seeds = {json.loads(p.read_text())["seed"] for p in results}
    assert seeds == {1, 2}
    # each job is its own W&B run, grouped under the sweep's name
    runs = sorted(sweep.glob("*/wandb/offline-run-*/*.wandb"))
    assert len(runs) == 2
    assert all(sweep.name.encode() in r.read_bytes() for r in runs)


def test_cli_misspelt_override_fails_naming_the_key(tmp_path):
    proc = cli("algo.inner_stpes=3", f"hydra.run.dir={tmp_path / 'typo'}")
    assert proc.returncode != 0
    assert "inner_stpes" in proc.stderr
    assert not (tmp_path / "typo").exists()


def test_cli_bad_value_fails_naming_key_and_allowed_values(tmp_path):
    proc = cli("data.shots=0", f"hydra.run.dir={tmp_path / 'bad'}", *QUICK)
    assert proc.returncode != 0
    assert "data.shots: 0 is invalid: must be an integer >= 1" in proc.stderr
    assert not (tmp_path / "bad").exists(), "nothing half-written may stay behind"


def test_diverging_evaluation_warns_and_reports_nan(make_config, tmp_path):
    import math

    parts = build(make_config([*QUICK, "algo.inner_lr=1e12", "algo.test_inner_steps=3"], output_dir=tmp_path / "d"))
    with pytest.warns(UserWarning, match="adaptation diverged"):
        (logged,) = parts["trainer"].test(parts["learner"], datamodule=parts["datamodule"], verbose=False)
    assert math.isnan(logged["test/mse"])
