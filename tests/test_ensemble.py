"""MAML++'s top-k checkpoint ensemble (``ensemble_top_k``): its figures sit beside the best
checkpoint's in results.json, and they are checked against independent computations."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from metaplus.config import ConfigError
from metaplus.data.episodes import EpisodeDataset
from metaplus.evaluation import mean_ci95
from metaplus.run import build, run
from metaplus.testing import QUICK, shared_data_dir

SINUSOID = [
    *QUICK,
    "trainer.max_epochs=4",
    "data.batches_per_epoch=2",
    "data.test_episodes=12",
    "data.val_episodes=6",
    "algo.test_inner_steps=2",
]


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
    mse = torch.tensor(
        [F.mse_loss(sum(p[i] for p in predictions) / 3, dataset[i][1].query_y).item() for i in range(len(dataset))]
    )
    mean, ci = mean_ci95(mse)
    assert metrics["test/mse_ensemble"] == pytest.approx(mean, rel=1e-5)
    assert metrics["test/mse_ensemble_ci95"] == pytest.approx(ci, rel=1e-4)

    # train=false with the run's checkpoint directory: the same best checkpoint and the same ensemble
    again = run(
        make_config(
            [*SINUSOID, "ensemble_top_k=3", "train=false", f"ckpt_path={tmp_path / 'run' / 'checkpoints'}"],
            tmp_path / "eval",
        )
    )
    assert again["test/mse"] == pytest.approx(metrics["test/mse"], rel=1e-6)
    assert again["test/mse_ensemble"] == pytest.approx(metrics["test/mse_ensemble"], rel=1e-6)
    assert again["test/ensemble_checkpoints"] == members


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared Omniglot (METAPLUS_DATA or ../shared/data)")
def test_classification_ensemble_of_one_equals_the_test_accuracy(make_config, tmp_path):
    overrides = [
        *QUICK,
        "algo=mamlpp",
        "data=omniglot",
        "model.filters=8",
        "data.meta_batch_size=2",
        "data.batches_per_epoch=2",
        "trainer.max_epochs=2",
        "data.val_episodes=4",
        "data.test_episodes=10",
        "ensemble_top_k=1",
    ]
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


# -- the ensemble's evaluation path (issues 24 and 27) -------------------------------------------------
def previous_evaluate_ensemble(learner, datamodule, checkpoints):
    """The ensemble as it was computed before issue 24/27 (members loaded in turn into the learner,
    every episode rebuilt per member, on ``learner.device``): the figures the new path must equal."""
    from metaplus.ensemble import _shard

    dataset = EpisodeDataset(datamodule.source("test"), datamodule.test_episodes, keys=(datamodule.eval_seed, "test"))
    episodes, _ = _shard(len(dataset))
    steps, device = learner.test_inner_steps, learner.device
    summed, targets = {}, {}
    classify = learner.task_type == "classification"
    learner.eval()
    for path, _ in checkpoints:
        learner.load_state_dict(torch.load(path, map_location=device, weights_only=True)["state_dict"])
        for i in episodes:
            _, task = dataset[i]
            prediction = learner.adapted_prediction(task, steps).detach()
            prediction = F.softmax(prediction, dim=-1) if classify else prediction
            summed[i] = summed[i] + prediction if i in summed else prediction
            targets[i] = task.query_y
    values, losses = [], []
    for i in episodes:
        mean = summed[i] / len(checkpoints)
        if classify:
            values.append((mean.argmax(dim=-1) == targets[i]).float().mean().item())
            losses.append(F.nll_loss(mean.clamp_min(1e-12).log(), targets[i]).item())
        else:
            values.append(F.mse_loss(mean, targets[i]).item())
            losses.append(values[-1])
    metric = learner.metric
    m, ci = mean_ci95(torch.tensor(values))
    return {
        f"test/{metric}_ensemble": m,
        f"test/{metric}_ensemble_ci95": ci,
        "test/loss_ensemble": mean_ci95(torch.tensor(losses))[0],
    }


@pytest.fixture(scope="module")
def sinusoid_top3(tmp_path_factory):
    """A short sinusoid run with three ensemble members: (config, metrics)."""
    from metaplus.compose import compose_config

    out = tmp_path_factory.mktemp("ensemble") / "run"
    cfg = compose_config([*SINUSOID, "ensemble_top_k=3"], out)
    return cfg, run(cfg)


def members_of(cfg, metrics):
    """The run's ensemble members as ``evaluate_ensemble`` takes them: (checkpoint, validation score)."""
    from pathlib import Path

    folder = Path(cfg.paths.output_dir) / "checkpoints"
    return [(folder / m["file"], m["val_score"]) for m in metrics["test/ensemble_checkpoints"]]


def learner_at_best(cfg, metrics):
    """A freshly built learner holding the run's best checkpoint (what ``trainer.test`` evaluated)."""
    from pathlib import Path

    parts = build(cfg)
    learner = parts["learner"]
    learner.load_state_dict(torch.load(Path(metrics["best_checkpoint"]), weights_only=True)["state_dict"])
    return learner, parts["datamodule"], parts["trainer"]


def test_the_ensemble_leaves_the_learner_as_it_was(sinusoid_top3):
    """What runs after the ensemble (the W&B summary's learned rates) must see the evaluated (best)
    checkpoint, not the last member."""
    from metaplus.ensemble import evaluate_ensemble

    cfg, metrics = sinusoid_top3
    learner, datamodule, _ = learner_at_best(cfg, metrics)
    members = members_of(cfg, metrics)
    assert members[0][0].name == metrics["best_checkpoint"].split("/")[-1] and len(members) == 3
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    learner.train()
    evaluate_ensemble(learner, datamodule, members)
    after = learner.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"the ensemble left member weights in the learner: {changed}"
    assert learner.training, "the learner's mode is left as it was"


def test_the_ensemble_figures_equal_the_previous_path_and_each_episode_is_built_once(sinusoid_top3, monkeypatch):
    from metaplus.data.sinusoid import SinusoidTasks
    from metaplus.ensemble import evaluate_ensemble

    cfg, metrics = sinusoid_top3
    learner, datamodule, _ = learner_at_best(cfg, metrics)
    members = members_of(cfg, metrics)
    expected = previous_evaluate_ensemble(learner_at_best(cfg, metrics)[0], datamodule, members)
    draws = []
    sample = SinusoidTasks.sample
    monkeypatch.setattr(SinusoidTasks, "sample", lambda self, g: draws.append(1) or sample(self, g))
    got = evaluate_ensemble(learner, datamodule, members)
    assert {k: got[k] for k in expected} == expected, "the same figures, exactly"
    assert got["test/mse_ensemble"] == metrics["test/mse_ensemble"]
    assert len(draws) == datamodule.test_episodes, f"{len(draws)} episode draws for {datamodule.test_episodes} episodes"


class Stop(Exception):
    pass


@pytest.mark.parametrize("batched", [None, False], ids=["default_batched_on_accelerators", "sequential"])
def test_the_ensemble_runs_on_the_trainer_s_device_under_its_precision(sinusoid_top3, monkeypatch, batched):
    """On a GPU machine ``trainer.test``'s teardown leaves the learner on the CPU: the members and the
    episodes must go to the trainer's root device (here the ``meta`` device stands for the GPU) and be
    evaluated under the trainer's precision context (autocast for ``bf16-mixed``), on both paths; off
    the CPU the default is the batched one."""
    from types import SimpleNamespace

    import lightning as L

    import metaplus.ensemble
    from metaplus.algorithms.maml import MAML
    from metaplus.ensemble import evaluate_ensemble

    cfg, metrics = sinusoid_top3
    learner, datamodule, _ = learner_at_best(cfg, metrics)
    seen = []

    def record(parameters, task):
        seen.append(
            (
                next(parameters).device.type,
                task.support_x.device.type,
                task.query_y.device.type,
                torch.is_autocast_enabled("cpu"),
            )
        )
        raise Stop

    if batched is None:
        monkeypatch.setattr(
            metaplus.ensemble, "batched_predictions", lambda adaptation, state, task: record(iter(state.values()), task)
        )
    else:
        monkeypatch.setattr(MAML, "adapted_prediction", lambda self, task, steps: record(self.parameters(), task))
    meta = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("meta")),
        precision_plugin=L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False).precision_plugin,
    )
    datamodule.trainer = meta
    with pytest.raises(Stop):
        evaluate_ensemble(learner, datamodule, members_of(cfg, metrics), batched=batched)
    assert seen == [("meta", "meta", "meta", True)]
    assert next(learner.parameters()).device.type == "cpu", "the learner itself stays where it was"


def test_the_batched_ensemble_figures_equal_the_sequential_ones(sinusoid_top3, monkeypatch):
    """Regression (MAML, MLP): the members adapted in one vmapped call give the figures of the members
    adapted one after another (the CPU's default path), and no member is adapted alone."""
    from metaplus.algorithms.base import EpisodicLearner
    from metaplus.ensemble import evaluate_ensemble

    cfg, metrics = sinusoid_top3
    learner, datamodule, _ = learner_at_best(cfg, metrics)
    members = members_of(cfg, metrics)
    sequential = evaluate_ensemble(learner, datamodule, members)
    assert sequential["test/mse_ensemble"] == metrics["test/mse_ensemble"], "the CPU's default is sequential"
    monkeypatch.setattr(EpisodicLearner, "adapted_prediction", lambda *a: pytest.fail("a member adapted alone"))
    batched = evaluate_ensemble(learner, datamodule, members, batched=True)
    for key in ("test/mse_ensemble", "test/mse_ensemble_ci95", "test/loss_ensemble"):
        assert batched[key] == pytest.approx(sequential[key], rel=1e-5), key
    assert batched["test/ensemble_episodes"] == sequential["test/ensemble_episodes"]


@pytest.mark.skipif(shared_data_dir() is None, reason="needs the shared Omniglot (METAPLUS_DATA or ../shared/data)")
def test_classification_ensemble_figures_equal_the_previous_path(make_config, tmp_path):
    from metaplus.ensemble import evaluate_ensemble

    overrides = [
        *QUICK,
        "algo=mamlpp",
        "data=omniglot",
        "model.filters=8",
        "data.meta_batch_size=2",
        "data.batches_per_epoch=2",
        "trainer.max_epochs=2",
        "data.val_episodes=4",
        "data.test_episodes=6",
        "ensemble_top_k=2",
    ]
    cfg = make_config(overrides, tmp_path / "run")
    metrics = run(cfg)
    members = members_of(cfg, metrics)
    assert len(members) == 2
    learner, datamodule, _ = learner_at_best(cfg, metrics)
    expected = previous_evaluate_ensemble(learner_at_best(cfg, metrics)[0], datamodule, members)
    got = evaluate_ensemble(learner, datamodule, members, workers=1)  # the previous path's arithmetic
    assert {k: got[k] for k in expected} == expected
    # The run's own path (worker threads where there are several torch threads, the best checkpoint's
    # test predictions as the first member's): the same figures as this process's default path.
    assert evaluate_ensemble(learner, datamodule, members)["test/acc_ensemble"] == metrics["test/acc_ensemble"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # worker threads run one op thread each: the arithmetic of one thread, exactly
        assert evaluate_ensemble(learner, datamodule, members, workers=2) == evaluate_ensemble(
            learner, datamodule, members, workers=1
        )
    finally:
        torch.set_num_threads(threads)
    # MAML++ (per-step BN, LSLR) with the members adapted in one vmapped call: the same figures
    batched = evaluate_ensemble(learner, datamodule, members, batched=True)
    assert batched["test/acc_ensemble"] == pytest.approx(got["test/acc_ensemble"], abs=1e-6)
    assert batched["test/loss_ensemble"] == pytest.approx(got["test/loss_ensemble"], rel=1e-5)


# -- cost (issue 26): the best checkpoint's test predictions reused, episodes on worker threads --------
def test_a_run_reuses_the_best_checkpoint_s_test_predictions_as_the_first_member(
    sinusoid_top3, make_config, tmp_path, monkeypatch
):
    """The best checkpoint is the ensemble's first member: ``trainer.test`` already adapted it on every
    test episode, so the run hands those predictions to the ensemble, which adapts only the other
    members, and the figures are the ones of adapting all of them."""
    import metaplus.run as run_module
    from metaplus.algorithms.base import EpisodicLearner
    from metaplus.ensemble import evaluate_ensemble

    calls, handed = [], {}
    adapted_prediction = EpisodicLearner.adapted_prediction

    def counting(self, task, steps):
        calls.append(1)
        return adapted_prediction(self, task, steps)

    def recording(learner, datamodule, checkpoints, **kwargs):
        handed.update(kwargs)
        return evaluate_ensemble(learner, datamodule, checkpoints, **kwargs)

    monkeypatch.setattr(EpisodicLearner, "adapted_prediction", counting)
    monkeypatch.setattr(run_module, "evaluate_ensemble", recording)
    cfg = make_config([*SINUSOID, "ensemble_top_k=3"], tmp_path / "run")
    metrics = run(cfg)
    known = handed["first_member_predictions"]
    assert sorted(known) == list(range(12)), "every test episode's predictions kept"
    assert len(calls) == 2 * 12, "the two other members only"
    members = members_of(cfg, metrics)
    assert members[0][0].name == metrics["best_checkpoint"].split("/")[-1]
    learner, datamodule, _ = learner_at_best(cfg, metrics)
    dataset = EpisodeDataset(datamodule.source("test"), 12, keys=(datamodule.eval_seed, "test"))
    learner.eval()
    for i in (0, 11):  # the kept predictions are the first member's own
        assert torch.equal(known[i], learner.adapted_prediction(dataset[i][1], 2).detach())
    everything = evaluate_ensemble(learner, datamodule, members)
    for key in ("test/mse_ensemble", "test/mse_ensemble_ci95", "test/loss_ensemble"):
        assert metrics[key] == everything[key], key
    assert learner.test_predictions is None


def test_a_first_member_that_is_not_the_tested_checkpoint_is_adapted(sinusoid_top3):
    """Only the episodes found in ``first_member_predictions`` are taken from it; with none, all are computed."""
    from metaplus.ensemble import evaluate_ensemble

    cfg, metrics = sinusoid_top3
    learner, datamodule, _ = learner_at_best(cfg, metrics)
    members = members_of(cfg, metrics)
    full = evaluate_ensemble(learner, datamodule, members)
    wrong = {i: torch.full((5, 1), 100.0) for i in range(3)}  # far off: the first 3 episodes get worse
    partly = evaluate_ensemble(learner, datamodule, members, first_member_predictions=wrong)
    assert partly["test/mse_ensemble"] > full["test/mse_ensemble"]
    assert evaluate_ensemble(learner, datamodule, members, first_member_predictions={}) == full


@pytest.mark.parametrize("batched", [False, True], ids=["sequential", "batched"])
def test_reused_predictions_give_the_figures_of_computing_them(sinusoid_top3, batched):
    from metaplus.ensemble import evaluate_ensemble

    cfg, metrics = sinusoid_top3
    learner, datamodule, _ = learner_at_best(cfg, metrics)
    members = members_of(cfg, metrics)
    dataset = EpisodeDataset(datamodule.source("test"), datamodule.test_episodes, keys=(datamodule.eval_seed, "test"))
    learner.eval()
    known = {i: learner.adapted_prediction(dataset[i][1], 2).detach() for i in range(len(dataset))}
    full = evaluate_ensemble(learner, datamodule, members, batched=batched)
    reused = evaluate_ensemble(learner, datamodule, members, batched=batched, first_member_predictions=known)
    for key in ("test/mse_ensemble", "test/mse_ensemble_ci95", "test/loss_ensemble"):
        assert reused[key] == pytest.approx(full[key], rel=1e-6), key


def test_episodes_on_two_worker_threads_give_the_same_figures(sinusoid_top3, monkeypatch):
    """The CPU path adapts episodes on worker threads, one op thread each, each holding its own member
    copies while it works: the figures are those of one thread exactly, both threads did work, no
    member is adapted by two threads at once, torch's thread count is restored."""
    import threading

    from metaplus.algorithms.base import EpisodicLearner
    from metaplus.ensemble import evaluate_ensemble

    cfg, metrics = sinusoid_top3
    learner, datamodule, _ = learner_at_best(cfg, metrics)
    members = members_of(cfg, metrics)
    torch.set_num_threads(1)
    one = evaluate_ensemble(learner, datamodule, members, workers=1)
    seen, busy, overlaps, lock = [], set(), [], threading.Lock()
    adapted_prediction = EpisodicLearner.adapted_prediction

    def recording(self, task, steps):
        with lock:
            seen.append((threading.get_ident(), torch.get_num_threads()))
            overlaps.extend([id(self)] if id(self) in busy else [])
            busy.add(id(self))
        try:
            return adapted_prediction(self, task, steps)
        finally:
            with lock:
                busy.discard(id(self))

    monkeypatch.setattr(EpisodicLearner, "adapted_prediction", recording)
    torch.set_num_threads(2)
    try:
        two = evaluate_ensemble(learner, datamodule, members, workers=2)
        assert torch.get_num_threads() == 2, "restored"
    finally:
        torch.set_num_threads(1)
    assert one == two
    assert len({thread for thread, _ in seen}) == 2 and {n for _, n in seen} == {1}
    assert not overlaps, "a member copy was adapted by two threads at once"
