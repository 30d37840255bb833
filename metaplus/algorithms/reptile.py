"""Reptile (Nichol, Achiam, Schulman 2018): first-order meta-learning by interpolation.

Per task b, run k plain inner steps (SGD, or Adam as in the paper's few-shot experiments) from phi to
W_b, then move phi <- phi + eps * mean_b(W_b - phi). No second derivatives.

How it maps onto the episodic learner:
- ``accumulate_task`` back-propagates the "pull" 0.5 * ||phi - stopgrad(W_b)||^2 / B, whose gradient is
  exactly (phi - W_b) / B. Going through autograd (rather than writing ``.grad`` by hand) keeps the
  base class's DDP gradient synchronisation: ranks average their shares of the meta-batch.
- ``outer_optimizer`` is plain SGD with lr = eps, so one optimizer step is the interpolation.
  eps follows the base learner's outer schedule, by default linear per meta-iteration from
  ``meta_lr`` to ``min_meta_lr`` over the run (``lr_schedule: linear``, ``lr_interval: step``; cosine
  or constant work too); the scheduler state is in every checkpoint, so a resumed run continues it.
- The inner loop trains on the support set only by default (``train_on: support``), the condition it
  meets at test time; ``train_on: support_query`` trains on support and query points together, as the
  paper's code does (its training tasks have no separate query set). The query set of the training
  task is then only used for the logged ``train/loss`` (query loss after adaptation).
- Each step uses the whole training set of the task (no inner mini-batches). Adam's moments start
  from zero for every task (the paper's code keeps them across tasks, a side effect of its
  implementation).
Evaluation is the base class's: the same inner optimizer for ``test_inner_steps`` on each fixed
episode's support set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from metaplus.algorithms.base import EpisodicLearner
from metaplus.data.episodes import Task
from metaplus.errors import check, check_choice
from metaplus.inner import sgd
from metaplus.inner.clone_adapt import UpdateRule


def adam(lr: float, betas: Sequence[float] = (0.0, 0.999), eps: float = 1e-8) -> UpdateRule:
    """Adam as an inner update rule with fresh moments (one rule object per adapted task).

    beta1 = 0 by default, as in the Reptile paper's few-shot experiments. Written out rather than
    ``torch.optim.Adam``: that keeps its step counters as CPU tensors (a host tensor and a host-side
    loop per adapted tensor and inner step, on a GPU a round-trip each; tests/test_host_syncs.py) and
    measured ~4x slower per inner step on this CPU; tests/test_reptile.py checks this rule against Adam.
    """
    beta1, beta2 = betas
    moments: dict[str, tuple[Tensor, Tensor, int]] = {}

    def rule(name: str, param: Tensor, grad: Tensor, step: int) -> Tensor:
        m, v, t = moments.get(name, (torch.zeros_like(grad), torch.zeros_like(grad), 0))
        m, v, t = beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad * grad, t + 1
        moments[name] = (m, v, t)
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        return -lr * m_hat / (v_hat.sqrt() + eps)

    return rule


class Reptile(EpisodicLearner):
    supports_batched_engine = False  # algo.engine=batched computes query losses after adaptation only

    def __init__(
        self,
        backbone: nn.Module,
        task_type: str,
        inner_steps: int = 10,
        meta_lr: float = 1.0,
        min_meta_lr: float = 0.0,
        lr_schedule: str = "linear",
        lr_interval: str = "step",
        inner_optimizer: str = "sgd",
        adam_betas: Sequence[float] = (0.0, 0.999),
        train_on: str = "support",
        name: str = "reptile",
        **shared: Any,
    ):
        check(
            "first_order",
            shared.get("first_order"),
            shared.get("first_order", True) is True,
            "true (Reptile has no second-order variant)",
        )
        shared["first_order"] = True
        super().__init__(
            backbone,
            task_type,
            inner_steps=inner_steps,
            meta_lr=meta_lr,
            min_meta_lr=min_meta_lr,
            lr_schedule=lr_schedule,
            lr_interval=lr_interval,
            name=name,
            **shared,
        )
        check("inner_steps", inner_steps, inner_steps >= 1, "an integer >= 1 (Reptile needs an inner loop)")
        check_choice("inner_optimizer", inner_optimizer, {"sgd", "adam"})
        check(
            "adam_betas",
            adam_betas,
            len(adam_betas) == 2 and all(0 <= b < 1 for b in adam_betas),
            "a pair [beta1, beta2] in [0, 1)",
        )
        check_choice("train_on", train_on, {"support", "support_query"})
        self.inner_optimizer = inner_optimizer
        self.adam_betas, self.train_on = tuple(adam_betas), train_on

    def inner_rule(self) -> UpdateRule:
        return adam(self.inner_lr, self.adam_betas) if self.inner_optimizer == "adam" else sgd(self.inner_lr)

    def training_first_order(self) -> bool:
        return True

    def training_task(self, task: Task) -> Task:
        """The points the inner loop trains on (see ``train_on``); the query set stays for logging."""
        if self.train_on == "support":
            return task
        return Task(
            torch.cat([task.support_x, task.query_x]),
            torch.cat([task.support_y, task.query_y]),
            task.query_x,
            task.query_y,
        )

    def accumulate_task(self, task: Task, weight: float) -> tuple[Tensor, Tensor]:
        learner = self.adapt(self.training_task(task), self.inner_steps, first_order=True)
        adapted = dict(learner.named_parameters())
        # d/dphi of 0.5 * ||phi - W||^2 is phi - W: SGD(lr=eps) then steps phi towards W.
        pull = sum(((phi - adapted[n].detach()) ** 2).sum() for n, phi in self.backbone.named_parameters())
        self.manual_backward(0.5 * weight * pull)
        with torch.no_grad():
            prediction = learner(task.query_x, step=self.inner_steps - 1)
            return self.loss_fn(prediction, task.query_y), self.score(prediction, task.query_y)

    def outer_optimizer(self) -> torch.optim.Optimizer:
        # One SGD step with lr = eps on the pull's gradient (phi - W) is the interpolation.
        return torch.optim.SGD(self.parameters(), lr=self.meta_lr)
