"""MAML++'s top-k checkpoint ensemble (``ensemble_top_k``): its figures sit beside the best
checkpoint's in results.json, and they are checked against independent computations."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from metaplus.testing import QUICK, shared_data_dir
from metaplus.config import ConfigError
from metaplus.data.episodes import EpisodeDataset
from metaplus.evaluation import mean_ci95
from metaplus.run import build, run

SINUSOID = [*QUICK, "trainer.max_epochs=4", "data.batches_per_epoch=2", "data.test_episodes=12",
            "data.val_episodes=6", "algo.test_inner_steps=2"]


def test_ensemble_of_one_is_the_best_checkpoint(make_config, tmp_path):
    metrics = run(make_config([*SINUSOID, "ensemble_top_k=1"], tmp_path / "run"))
    assert metrics["test/mse_ensemble"] == pytest.approx(metrics["test/mse"], rel=1e-6)
    assert metrics["test/mse_ensemble_ci95"] == pytest.approx(metrics["test/mse_ci95"], rel=1e-5)
    assert [c["file"] for c in metrics["test/ensemble_checkpoints"]] == [metrics["best_checkpoint"].split("/")[-1]]


def test_ensemble_averages_the_predictions_of_the_top_k_checkpoints(make_config, tmp_path):
    cfg = make_config([*SINUSOID, "ensemble_top_k=3"], tmp_path / "run")
    metrics = run(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["test/mse_ensemble"] == metrics["test/mse_ensemble"] and "test/mse" in saved
    members = metrics["test/ensemble_checkpoints"]
    scores = [m["val_score"] for m in members]
    assert len(members) == 3 and scores == sorted(scores), "best (lowest val MSE) first"
    assert saved["preset"]["name"] == "maml_sinusoid"

    # Independently: adapt each member on every test episode with the learner's own adapt(), average
    # the query predictions by hand, score them.
    parts = build(cfg)
    learner, dm = parts["learner"], parts["datamodule"]
    dataset = EpisodeDataset(dm.source("test"), dm.test_episodes, keys=(dm.eval_seed, "test"))
    predictions = []
    for member in members:
        state = torch.load(tmp_path / "run" / "checkpoints" / member["file"], weights_only=True)["state_dict"]
        learner.load_state_dict(state)
        per_episode = []
        for i in range(len(dataset)):
            task = dataset[i][1]
            with torch.enable_grad():
                adapted = learner.adapt(task, 2, first_order=True)
            per_episode.append(adapted(task.query_x, step=1).detach())
        predictions.append(per_episode)
    mse = torch.tensor([F.mse_loss(sum(p[i] for p in predictions) / 3, dataset[i][1].query_y).item()
                        for i in range(len(dataset))])
    mean, ci = mean_ci95(mse)
    assert metrics["test/mse_ensemble"] == pytest.approx(mean, rel=1e-5)
    assert metrics["test/mse_ensemble_ci95"] == pytest.approx(ci, rel=1e-4)

    # train=false with the run's checkpoint directory: the same best checkpoint and the same ensemble
    again = run(make_config([*SINUSOID, "ensemble_top_k=3", "train=false",
                             f"ckpt_path={tmp_path / 'run' / 'checkpoints'}"], tmp_path / "eval"))
    assert again["test/mse"] == pytest.approx(metrics["test/mse"], rel=1e-6)
    assert again["test/mse_ensemble"] == pytest.approx(metrics["test/mse_ensemble"], rel=1e-6)
    assert again["test/ensemble_checkpoints"] == members


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared Omniglot (METAPLUS_DATA or ../shared/data)")
def test_classification_ensemble_of_one_equals_the_test_accuracy(make_config, tmp_path):
    overrides = [*QUICK, "algo=mamlpp", "data=omniglot", "model.filters=8", "data.meta_batch_size=2",
                 "data.batches_per_epoch=2", "trainer.max_epochs=2", "data.val_episodes=4", "data.test_episodes=10",
                 "ensemble_top_k=1"]
    metrics = run(make_config(overrides, tmp_path / "run"))
    assert metrics["test/acc_ensemble"] == pytest.approx(metrics["test/acc"], abs=1e-6)
    assert len(metrics["test/ensemble_checkpoints"]) == 1


def test_mtnet_refuses_the_ensemble_by_name(make_config, tmp_path):
    with pytest.raises(ConfigError, match="ensemble_top_k"):
        run(make_config([*QUICK, "algo=mtnet", "ensemble_top_k=2"], tmp_path / "run"))


def test_bad_ensemble_values_fail_early(make_config, tmp_path):
    with pytest.raises(ConfigError, match="ensemble_top_k"):
        run(make_config([*QUICK, "ensemble_top_k=-1"], tmp_path / "run"))
    assert not (tmp_path / "run").exists()
