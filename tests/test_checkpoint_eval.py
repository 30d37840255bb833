"""``python train.py train=false ckpt_path=...`` (README) evaluates a checkpoint with its run's config.

The run trains polynomial regression with a 16-16 MLP, so the default composition (sinusoid, 40-40)
could not even load its weights: the evaluation must take algo/data/model from the run's
``.hydra/config.yaml``, while values on the command line still win.
"""

import json
import shutil

import pytest

from metaplus.testing import commands

TRAIN = ["data=polynomial", "model.hidden=[16,16]", "debug=fast", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("ckpt_eval")
    proc = commands.train(*TRAIN, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cwd, commands.only_directory(cwd / "outputs" / "runs")


def new_runs(cwd, trained_dir):
    return [p for p in (cwd / "outputs" / "runs").iterdir() if p != trained_dir]


def test_checkpoint_is_evaluated_with_its_runs_config_and_the_command_line_wins(trained):
    cwd, run_dir = trained
    proc = commands.train(
        "train=false",
        f"ckpt_path={run_dir}/checkpoints/last.ckpt",
        "data.test_episodes=4",
        "trainer.enable_progress_bar=false",
        cwd=cwd,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    [evaluation] = new_runs(cwd, run_dir)
    results = json.loads((evaluation / "results.json").read_text())
    assert results["config"]["data"]["name"] == "polynomial"
    assert results["config"]["model"]["hidden"] == [16, 16]
    assert results["test/episodes"] == 4, "a value on the command line wins over the run's"
    assert results["config"]["data"]["val_episodes"] == 8, "the run's own value (debug=fast) where none is given"
    trained_results = json.loads((run_dir / "results.json").read_text())
    assert results["val/mse"] == pytest.approx(trained_results["val/mse"], rel=1e-5), "same weights, same episodes"


def test_another_algo_than_the_runs_fails_at_once_naming_it(trained):
    cwd, run_dir = trained
    before = set(new_runs(cwd, run_dir))
    proc = commands.train("train=false", f"ckpt_path={run_dir}/checkpoints", "algo=fomaml", cwd=cwd)
    assert proc.returncode != 0
    assert "algo: 'fomaml' is not the checkpoint's" in proc.stderr and "algo=maml" in proc.stderr
    assert set(new_runs(cwd, run_dir)) == before, "a refused evaluation leaves no run directory"


def test_checkpoint_without_its_run_config_says_which_groups_to_add(trained, tmp_path):
    cwd, run_dir = trained
    alone = tmp_path / "last.ckpt"
    shutil.copy(run_dir / "checkpoints" / "last.ckpt", alone)
    proc = commands.train("train=false", f"ckpt_path={alone}", "data=polynomial", cwd=tmp_path)
    assert proc.returncode != 0
    assert "ckpt_path" in proc.stderr and "add algo=<its algo>" in proc.stderr
    assert "data=" not in proc.stderr.split("add ", 1)[1].split("(")[0], "data= was given"
    assert not (tmp_path / "outputs" / "runs").exists() or not list((tmp_path / "outputs" / "runs").iterdir())
