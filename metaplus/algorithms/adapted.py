"""A learner adapted to one support set: ``learner.adapt_to(support_x, support_y)`` then ``predict``.

This is the evaluation protocol of :meth:`EpisodicLearner.evaluate_task` as a library call, for
data the project does not ship: adapt a clone of the backbone on the support set with the
learner's own inner loop (its learning rates, per-step learned rates, masks, frozen parameters),
first order and in evaluation mode as evaluation does, then score inputs after the last step.
Per-step layers (MAML++'s per-step batch norm) get the step index themselves: the support pass of
inner step ``k`` uses step ``k``, predictions after ``K`` steps use step ``K - 1`` (0 when ``K = 0``),
exactly as ``evaluate_task`` scores its query set.

Batch norm: with ``bn_stats=batch`` (the default, as the MAML and MAML++ reference code) every
forward pass normalises with the statistics of the batch it is given, so a prediction depends on the
other inputs scored with it. ``predict`` therefore scores everything it is given in ONE forward pass,
as evaluation scores a whole query set: pass the query set together, not one image at a time
(single images would each be normalised by themselves and the answers change). A run that kept
running statistics (``algo.bn_stats=running``, or ``algo.bnrs=true``) can be loaded with
``metaplus.load(..., bn_stats="running")``: predictions then use the stored statistics of the
matching step and no longer depend on the batch.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaplus.data.episodes import Task
from metaplus.errors import check, check_int


class Score(NamedTuple):
    """What :meth:`AdaptedLearner.score` returns; unpacks as ``loss, metric = adapted.score(x, y)``."""

    loss: float  # the training loss (cross-entropy, or MSE for regression)
    metric: float  # the reported metric: accuracy (classification) or mean squared error (regression)


class AdaptedLearner:
    """The adapted clone of a learner's backbone, with the step index its predictions use."""

    def __init__(self, learner, model: nn.Module, steps: int):
        self.learner, self.model, self.steps = learner, model, steps
        self.step = max(steps - 1, 0)  # the step evaluate_task scores the query set with

    @property
    def device(self) -> torch.device:
        return next(self.learner.parameters()).device

    def __call__(self, x: Tensor) -> Tensor:
        """Raw outputs (logits, or regression values) for the whole batch ``x`` in one forward pass."""
        with torch.no_grad():
            return self.model(torch.as_tensor(x, dtype=torch.float32).to(self.device), step=self.step)

    def predict(self, x: Tensor) -> Tensor:
        """Classification: the predicted label (0..ways-1) of each row of ``x``; regression: the values."""
        out = self(x)
        return out.argmax(dim=-1) if self.learner.task_type == "classification" else out

    def predict_proba(self, x: Tensor) -> Tensor:
        """Classification: softmax probabilities over the ways, one row per input."""
        check(
            "task_type",
            self.learner.task_type,
            self.learner.task_type == "classification",
            "classification for predict_proba (regression has no class probabilities)",
        )
        return F.softmax(self(x), dim=-1)

    def score(self, x: Tensor, y: Tensor) -> Score:
        """:class:`Score` (loss, metric) of the batch ``(x, y)``: what ``evaluate_task`` reports for a query set."""
        out = self(x)
        y = torch.as_tensor(y).to(out.device)
        return Score(loss=float(self.learner.loss_fn(out, y)), metric=float(self.learner.score(out, y)))


def adapt_to(learner, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> AdaptedLearner:
    """Adapt ``learner`` to one support set with ``steps`` inner steps (default: its
    ``test_inner_steps``, what evaluation uses); the learner itself is left unchanged.

    Classification labels are integers 0..ways-1 (as many ways as the backbone's head has outputs).
    """
    steps = learner.test_inner_steps if steps is None else steps
    check_int("steps", steps, 0)
    device = next(learner.parameters()).device
    x = torch.as_tensor(support_x, dtype=torch.float32).to(device)
    y = torch.as_tensor(support_y).to(device)
    if learner.task_type == "classification":
        check("support_y", y.dtype, not y.is_floating_point(), "integer class labels 0..ways-1")
    check("support_y", tuple(y.shape), y.shape[0] == x.shape[0], f"one label per support input ({x.shape[0]})")
    learner.eval()  # as Lightning's validate/test: per-step BN statistics are read, never updated
    learner.start_episode()  # as in evaluation (pretrain: every episode starts from a zero head)
    task = Task(x, y, x[:0], y[:0])
    with torch.enable_grad():  # adaptation needs gradients even under torch.no_grad()/inference
        model = learner.adapt(task, steps, first_order=True)
    return AdaptedLearner(learner, model, steps)
