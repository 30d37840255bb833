"""The torchmetrics-based evaluation gives the numbers of the former hand-written one.

The reference below is a copy of the formulas metaplus used before torchmetrics did the bookkeeping
(hand-written accuracy, F.mse_loss as the regression score, the per-step curve of every episode,
population-std 95% interval, episodes de-duplicated by index): the new code is checked against it on
fixed episodes, in one process and under 2-process DDP (gloo), with the episode the distributed
sampler pads counted once.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from metaplus.algorithms import MAML
from metaplus.config import ConfigError
from metaplus.data.episodes import Task, collate_tasks
from metaplus.evaluation import EpisodeCurves, episode_score
from metaplus.nn import MLP, Conv4
from metaplus.testing import quiet_trainer
from metaplus.testing.probes import EvalResultsProbe


# -- the former formulas, copied as the independent reference -----------------------------------
def old_accuracy(logits, y):
    return (logits.argmax(dim=-1) == y).float().mean()


def old_score(task_type, prediction, target):
    return F.mse_loss(prediction, target) if task_type == "regression" else old_accuracy(prediction, target)


def old_evaluate_task(learner, task, steps):
    losses, scores = [], []

    def score_query(model, step):
        with torch.no_grad():
            prediction = model(task.query_x, step=max(step, 0))
            losses.append(learner.loss_fn(prediction, task.query_y))
            scores.append(old_score(learner.task_type, prediction, task.query_y))

    score_query(learner.backbone, -1)
    with torch.enable_grad():
        learner.adapt(task, steps, first_order=True, on_step=score_query)
    return torch.stack(losses), torch.stack(scores)


def old_mean_ci95(values):
    values = values.double().flatten()
    n = values.numel()
    std = values.std(unbiased=False).item() if n > 1 else 0.0
    return values.mean().item(), 1.96 * std / math.sqrt(n)


def old_results(learner, episodes, stage):
    """results.json's entries for ``stage`` as the former code computed them (full curve always)."""
    curves = {}
    for index, task in episodes:  # de-duplication: the first record of each index counts
        curves.setdefault(index, old_evaluate_task(learner, task, learner.test_inner_steps))
    loss = torch.stack([curves[i][0] for i in sorted(curves)])
    values = torch.stack([curves[i][1] for i in sorted(curves)])
    metric = learner.metric
    m, ci = old_mean_ci95(values[:, -1])
    loss_mean, loss_ci = old_mean_ci95(loss[:, -1])
    by_step = [old_mean_ci95(values[:, k]) for k in range(values.shape[1])]
    return {
        f"{stage}/loss": loss_mean,
        f"{stage}/loss_ci95": loss_ci,
        f"{stage}/{metric}": m,
        f"{stage}/{metric}_ci95": ci,
        f"{stage}/{metric}_step0": old_mean_ci95(values[:, 0])[0],
        f"{stage}/step0_episodes": float(values.shape[0]),  # every episode: fewer than eval_curve_episodes
        f"{stage}/episodes": float(values.shape[0]),
        f"{stage}/{metric}_by_step": [round(mean, 6) for mean, _ in by_step],
        f"{stage}/{metric}_ci95_by_step": [round(ci, 6) for _, ci in by_step],
    }


# -- fixed episodes -------------------------------------------------------------------------------
def sinusoid_episodes(n=7):
    g = torch.Generator().manual_seed(5)
    episodes = []
    for i in range(n):
        amplitude, phase = 0.1 + 4.9 * torch.rand((), generator=g), math.pi * torch.rand((), generator=g)
        x = 10 * torch.rand(15, 1, generator=g) - 5
        y = amplitude * torch.sin(x - phase)
        episodes.append((i, Task(x[:5], y[:5], x[5:], y[5:])))
    return episodes


def image_episodes(n=7, ways=3):
    g = torch.Generator().manual_seed(6)
    labels = torch.arange(ways).repeat_interleave(2)
    return [
        (
            i,
            Task(
                torch.randn(len(labels), 1, 16, 16, generator=g),
                labels,
                torch.randn(len(labels), 1, 16, 16, generator=g),
                labels,
            ),
        )
        for i in range(n)
    ]


def regression_learner(**kwargs):
    torch.manual_seed(0)
    return MAML(MLP(), "regression", inner_steps=1, test_inner_steps=3, inner_lr=0.05, **kwargs)


def classification_learner(**kwargs):
    torch.manual_seed(0)
    return MAML(
        Conv4(input_shape=[1, 16, 16], output_dim=3, filters=4),
        "classification",
        inner_steps=1,
        test_inner_steps=3,
        inner_lr=0.5,
        **kwargs,
    )


LEARNERS = {
    "regression": (regression_learner, sinusoid_episodes),
    "classification": (classification_learner, image_episodes),
}


def loader(episodes, batch_size=3):
    return DataLoader(episodes, batch_size=batch_size, shuffle=False, collate_fn=collate_tasks)


def evaluate(learner, episodes, **trainer_args):
    trainer = quiet_trainer(**trainer_args)
    (val,) = trainer.validate(learner, dataloaders=loader(episodes), verbose=False)
    (test,) = trainer.test(learner, dataloaders=loader(episodes), verbose=False)
    return {**val, **learner.adaptation_curves.get("val", {}), **test, **learner.adaptation_curves.get("test", {})}


def assert_same(new: dict, old: dict):
    assert new.keys() == old.keys()
    for key, value in old.items():
        assert new[key] == pytest.approx(value, rel=1e-6, abs=1e-7), key


# -- tests ----------------------------------------------------------------------------------------
def test_episode_score_is_the_former_accuracy_and_mse():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 3.0, 0.0], [0.0, 0.0, 1.0], [5.0, 1.0, 2.0]])
    labels = torch.tensor([1, 1, 2, 1])  # a tie (row 1) resolves to the first maximum, as argmax
    assert episode_score("classification", logits, labels).item() == old_accuracy(logits, labels).item() == 0.5
    prediction, target = torch.tensor([[1.0], [2.0], [4.0]]), torch.tensor([[0.0], [2.0], [1.0]])
    assert episode_score("regression", prediction, target).item() == pytest.approx(10 / 3, rel=1e-7)
    assert episode_score("regression", prediction, target).item() == F.mse_loss(prediction, target).item()


@pytest.mark.parametrize("task_type", ["regression", "classification"])
def test_results_equal_the_former_formulas_in_one_process(task_type):
    make, episodes = LEARNERS[task_type]
    learner = make(eval_curve="all")
    expected = {**old_results(learner, episodes(), "val"), **old_results(learner, episodes(), "test")}
    assert_same(evaluate(learner, episodes()), expected)


def test_curve_off_gives_the_same_endpoints_without_the_by_step_keys():
    """Default eval_curve=test: validation scores only step 0 and the last step (same numbers)."""
    learner = regression_learner()
    full = old_results(learner, sinusoid_episodes(), "val")
    new = evaluate(learner, sinusoid_episodes())
    assert_same(
        {k: v for k, v in new.items() if k.startswith("val/")}, {k: v for k, v in full.items() if "by_step" not in k}
    )
    assert "test/mse_by_step" in new and len(new["test/mse_by_step"]) == 4


def test_curve_off_scores_the_query_set_twice():
    """No per-step query forward passes: one before adaptation, one after the last step."""
    learner = classification_learner()
    ((_, task),) = image_episodes(1)
    calls = []
    # learn2learn's clones share the original module's forward hooks, so adapted forwards count too
    learner.backbone.head.register_forward_hook(lambda module, inputs, output: calls.append(1))
    losses, scores = learner.evaluate_task(task, 3, per_step=False)
    assert len(calls) == 3 + 2, "3 support forwards (one per inner step) and 2 query forwards"
    assert losses.shape == scores.shape == (2,)
    calls.clear()
    full_losses, full_scores = learner.evaluate_task(task, 3)
    assert len(calls) == 3 + 4 and full_losses.shape == (4,)
    torch.testing.assert_close(losses, full_losses[[0, -1]])
    torch.testing.assert_close(scores, full_scores[[0, -1]])


def test_eval_curve_is_validated():
    with pytest.raises(ConfigError, match=r"eval_curve: 'val' is invalid: must be one of \['all', 'none', 'test'\]"):
        regression_learner(eval_curve="val")


def test_episode_curves_keep_one_record_per_index():
    curves = EpisodeCurves()
    for index, value in [(2, 0.5), (0, 0.1), (2, 0.5), (1, float("nan"))]:
        curves.update(torch.tensor(index), torch.tensor([value, value]), torch.tensor([value, 2 * value]))
    index, loss, metric = curves.compute()
    assert index.tolist() == [0, 1, 2]
    assert metric[:, 1].tolist()[::2] == pytest.approx([0.2, 1.0]) and math.isnan(metric[1, 1]), "NaN is kept"


@pytest.mark.slow  # ~40 s per case on 2 CPU cores: two spawned processes import torch and Lightning
@pytest.mark.parametrize("task_type", ["regression", "classification"])
def test_results_equal_the_former_formulas_under_two_process_ddp(task_type, tmp_path):
    """2 ranks on gloo: 7 episodes, the sampler pads rank 1 with episode 0; torchmetrics gathers."""
    make, episodes = LEARNERS[task_type]
    learner = make(eval_curve="all")
    expected = {**old_results(learner, episodes(), "val"), **old_results(learner, episodes(), "test")}
    trainer = quiet_trainer(devices=2, strategy="ddp_spawn", callbacks=[EvalResultsProbe(str(tmp_path))])
    trainer.test(learner, dataloaders=loader(episodes(), batch_size=2), verbose=False)
    for rank in (0, 1):  # every rank holds the gathered result
        results = torch.load(tmp_path / f"rank{rank}.pt")
        assert_same(results["test"], {k: v for k, v in expected.items() if k.startswith("test/")})
        assert results["test"]["test/episodes"] == 7


def test_validate_and_test_return_the_exact_results_and_the_curves_live_on_the_learner():
    """results.json takes the scalars from what trainer.validate/test return: they must be the float64
    means of the former formulas (logged as Python floats they were float32), and the curve lists,
    which cannot be logged, are the learner's ``adaptation_curves``."""
    learner = regression_learner(eval_curve="all")
    expected = {**old_results(learner, sinusoid_episodes(), "val"), **old_results(learner, sinusoid_episodes(), "test")}
    trainer = quiet_trainer()
    for stage, evaluate in (("val", trainer.validate), ("test", trainer.test)):
        (logged,) = evaluate(learner, dataloaders=loader(sinusoid_episodes()), verbose=False)
        scalars = {k: v for k, v in expected.items() if k.startswith(f"{stage}/") and "by_step" not in k}
        assert logged.keys() == scalars.keys()
        for key, value in scalars.items():
            assert logged[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        assert learner.adaptation_curves[stage] == {
            k: v for k, v in expected.items() if k.startswith(f"{stage}/") and "by_step" in k
        }
