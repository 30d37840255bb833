"""The adaptation curve on a fixed subset of the evaluation episodes (issue 26): ``eval_curve_episodes``
first episodes (by index) score every inner step; the final-step metrics still cover every episode."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DataLoader

from metaplus.algorithms import MAML
from metaplus.config import ConfigError
from metaplus.data.episodes import Task, collate_tasks
from metaplus.nn import MLP
from metaplus.testing import quiet_trainer

STEPS = 3


def sinusoid_episodes(n: int) -> list[tuple[int, Task]]:
    g = torch.Generator().manual_seed(5)
    episodes = []
    for i in range(n):
        amplitude, phase = 0.1 + 4.9 * torch.rand((), generator=g), math.pi * torch.rand((), generator=g)
        x = 10 * torch.rand(15, 1, generator=g) - 5
        episodes.append(
            (i, Task(x[:5], amplitude * torch.sin(x[:5] - phase), x[5:], amplitude * torch.sin(x[5:] - phase)))
        )
    return episodes


def evaluated(n: int, **kwargs) -> tuple[dict, list[int]]:
    """test results of a fixed learner on ``n`` episodes, and the indices of the episodes it scored per step."""
    torch.manual_seed(0)
    learner = MAML(MLP(), "regression", inner_steps=1, test_inner_steps=STEPS, inner_lr=0.05, **kwargs)
    per_step_episodes = []
    evaluate = learner.evaluate_task

    def recording(task, steps, per_step=True, final_prediction=None, score_before=True):
        if per_step:
            per_step_episodes.append(next(i for i, t in episodes if torch.equal(t.query_x, task.query_x)))
        return evaluate(task, steps, per_step, final_prediction, score_before)

    episodes = sinusoid_episodes(n)
    learner.evaluate_task = recording
    trainer = quiet_trainer()
    (logged,) = trainer.test(
        learner, dataloaders=DataLoader(episodes, batch_size=4, collate_fn=collate_tasks), verbose=False
    )
    return {**logged, **learner.adaptation_curves.get("test", {})}, per_step_episodes


def test_the_curve_uses_the_first_episodes_and_the_final_metrics_every_episode():
    everywhere, scored_everywhere = evaluated(10, eval_curve_episodes=None)
    subset, scored_in_subset = evaluated(10, eval_curve_episodes=4)
    # sorted: on the CPU with several threads the episodes run on worker threads, in any order
    assert sorted(scored_everywhere) == list(range(10)) and sorted(scored_in_subset) == [0, 1, 2, 3]
    final = {k: v for k, v in everywhere.items() if "by_step" not in k and "step0" not in k}
    assert final == {k: v for k, v in subset.items() if "by_step" not in k and "step0" not in k}, (
        "final-step metrics on all 10 episodes"
    )
    assert subset["test/episodes"] == 10.0
    first_four, _ = evaluated(4, eval_curve_episodes=None)
    # Before adaptation is scored where the curve is: on the first 4 episodes.
    assert subset["test/step0_episodes"] == 4.0 and everywhere["test/step0_episodes"] == 10.0
    assert subset["test/mse_step0"] == first_four["test/mse_step0"] != everywhere["test/mse_step0"]
    assert len(subset["test/mse_by_step"]) == STEPS + 1
    assert subset["test/mse_by_step"] == first_four["test/mse_by_step"]
    assert subset["test/mse_ci95_by_step"] == first_four["test/mse_ci95_by_step"]
    assert subset["test/mse_by_step"] != everywhere["test/mse_by_step"]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "all"])
def test_eval_curve_episodes_is_checked(bad):
    with pytest.raises(ConfigError, match="eval_curve_episodes.*null \\(every episode\\) or an integer >= 1"):
        MAML(MLP(), "regression", eval_curve_episodes=bad)


def test_episodes_outside_the_curve_score_the_query_set_once():
    """Outside the curve's episodes the query set is scored after the last step only (not before)."""
    torch.manual_seed(0)
    learner = MAML(MLP(), "regression", inner_steps=1, test_inner_steps=STEPS, inner_lr=0.05, eval_curve_episodes=2)
    task = sinusoid_episodes(1)[0][1]
    scored = []  # the size of every set a loss is taken on: 5 support points, 10 query points
    loss_fn = learner.loss_fn
    learner.loss_fn = lambda prediction, target: scored.append(len(target)) or loss_fn(prediction, target)
    loss, metric = learner.evaluate_task(task, STEPS, per_step=False, score_before=False)
    assert scored == [5] * STEPS + [10], scored
    assert torch.isnan(loss[0]) and torch.isnan(metric[0]) and torch.isfinite(loss[1])
    scored.clear()
    full_loss, _ = learner.evaluate_task(task, STEPS, per_step=False)
    assert scored == [10] + [5] * STEPS + [10], scored
    assert torch.equal(loss[1], full_loss[1])
