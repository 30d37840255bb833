"""The episodic LightningModule every algorithm extends.

One ``training_step`` is one meta-iteration over a meta-batch of tasks. Each task's outer loss is
back-propagated as soon as it is computed (``manual_backward`` per task, gradients accumulated), so
a task's graph is freed before the next is built: memory stays flat in the meta-batch size. Under
DDP, gradients are synchronised only on the last task of the step.

Subclasses override small hooks, not the loop:
- ``adapted_names()``   which backbone parameters the inner loop changes (default: all),
- ``inner_rule()``      how an inner gradient becomes an update (default: SGD with ``inner_lr``),
- ``task_loss(task)``   the outer loss of one task (default: query loss after adaptation),
- ``accumulate_task``   how that loss becomes gradients (Reptile replaces it),
- ``extra_optimizer_groups`` / ``lr_scheduler`` for meta-parameters and outer schedules.
Validation and test are the same code for every algorithm (``evaluate_task``).
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import lightning as L
from lightning.pytorch.utilities import rank_zero_warn
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaplus.config import ConfigError, check, check_choice, check_int, check_positive, metric_name
from metaplus.data.episodes import Task, TaskBatch
from metaplus.evaluation import EpisodeRecords, curve, summarise, unique_episodes
from metaplus.inner import make_engine, sgd


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/inf: stop at once with the step and the likely culprits."""


def accuracy(logits: Tensor, y: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == y).float().mean()


class EpisodicLearner(L.LightningModule):
    def __init__(
        self,
        backbone: nn.Module,
        task_type: str,
        inner_steps: int = 1,
        test_inner_steps: int | None = None,
        inner_lr: float = 0.01,
        meta_lr: float = 1e-3,
        first_order: bool = False,
        name: str = "learner",
        inner_loop: Any = None,
        engine: str = "l2l",
        chunk_size: int | None = None,
    ):
        super().__init__()
        check_choice("task_type", task_type, {"regression", "classification"})
        check_int("inner_steps", inner_steps, 0)
        test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        check_int("test_inner_steps", test_inner_steps, 0)
        check_positive("inner_lr", inner_lr)
        check_positive("meta_lr", meta_lr)
        check("first_order", first_order, isinstance(first_order, bool), "true or false")
        self.save_hyperparameters(ignore=["backbone", "inner_loop"])
        self.automatic_optimization = False  # per-task backward: see module docstring
        self.backbone = backbone
        self.inner = inner_loop if inner_loop is not None else make_engine(engine, chunk_size)
        if getattr(self.inner, "batched", False) and not self.supports_batched_engine:
            raise ConfigError("engine", f"{engine!r} is invalid for {type(self).__name__}: its training step is "
                                        f"not a query loss after adaptation; use engine=l2l")
        self.task_type, self.metric = task_type, metric_name(task_type)
        self.inner_steps, self.test_inner_steps = inner_steps, test_inner_steps
        self.inner_lr, self.meta_lr, self.first_order = inner_lr, meta_lr, first_order
        self.records: dict[str, EpisodeRecords] = {}
        self.eval_results: dict[str, dict] = {}

    # -- hooks for subclasses ------------------------------------------------------------------
    #: False where training is not "query loss after adaptation" (Reptile, MT-net, pretrain): such a
    #: learner refuses ``engine=batched``, which computes exactly that loss for a whole meta-batch.
    supports_batched_engine = True

    def loss_fn(self, prediction: Tensor, target: Tensor) -> Tensor:
        if self.task_type == "regression":
            return F.mse_loss(prediction, target)
        return F.cross_entropy(prediction, target)

    def score(self, prediction: Tensor, target: Tensor) -> Tensor:
        """The reported metric of one prediction: MSE (regression) or accuracy (classification)."""
        if self.task_type == "regression":
            return F.mse_loss(prediction, target)
        return accuracy(prediction, target)

    def adapted_names(self) -> set[str]:
        return {n for n, p in self.backbone.named_parameters() if p.requires_grad}

    def inner_rule(self):
        return sgd(self.inner_lr)

    def training_first_order(self) -> bool:
        return self.first_order

    def may_leave_parameters_unused(self) -> bool:
        """True when some parameter can get no gradient in a training step: plain DDP then fails
        (its reducer waits for every parameter), so ``run.build`` selects DDP's unused-parameter
        search (``ddp_find_unused_parameters_true``) for such learners only."""
        return False

    def adapt(self, task: Task, steps: int, first_order: bool, on_step=None) -> nn.Module:
        return self.inner.adapt(self.backbone, task.support_x, task.support_y, loss_fn=self.loss_fn,
                                steps=steps, adapted=self.adapted_names(), rule=self.inner_rule(),
                                first_order=first_order, on_step=on_step)

    def task_loss(self, task: Task) -> tuple[Tensor, Tensor]:
        """Outer loss and metric of one training task: query loss after ``inner_steps`` steps."""
        learner = self.adapt(task, self.inner_steps, self.training_first_order())
        prediction = learner(task.query_x, step=max(self.inner_steps - 1, 0))
        return self.loss_fn(prediction, task.query_y), self.score(prediction, task.query_y).detach()

    def query_step_weights(self) -> Tensor | None:
        """Weights of the query losses after each inner step (None: the last step only). MAML's MSL
        answers here for the batched engine; the per-task path reads it in ``task_loss``."""
        return None

    def accumulate_task(self, task: Task, weight: float) -> tuple[Tensor, Tensor]:
        """Add this task's share of the meta-gradient to ``.grad``; return its (loss, metric)."""
        loss, metric = self.task_loss(task)
        self.manual_backward(loss * weight)
        return loss.detach(), metric

    def accumulate_batched(self, batch: TaskBatch) -> tuple[list[Tensor], list[Tensor]]:
        """The batched engine's training path: each chunk of tasks' outer losses in one call, one
        backward per chunk (so memory grows with the chunk); returns per-task (losses, metrics)."""
        n, losses, metrics = len(batch), [], []
        for chunk in self.inner.chunks(n):
            with self.gradient_sync(last=chunk.stop >= n):
                loss, prediction = self.inner.query_losses(
                    self.backbone, batch.support_x[chunk], batch.support_y[chunk], batch.query_x[chunk],
                    batch.query_y[chunk], loss_fn=self.loss_fn, steps=self.inner_steps,
                    adapted=self.adapted_names(), rule=self.inner_rule(),
                    first_order=self.training_first_order(), step_weights=self.query_step_weights())
                self.manual_backward(loss.sum() / n)
            losses += list(loss.detach())
            metrics += [self.score(p, y).detach() for p, y in zip(prediction, batch.query_y[chunk])]
        return losses, metrics

    # -- training ------------------------------------------------------------------------------
    def gradient_sync(self, last: bool):
        """DDP: all-reduce gradients only on the meta-batch's last backward."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        return nullcontext() if last or block is None else block()

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        n = len(batch)
        losses, metrics = [], []
        if getattr(self.inner, "batched", False):  # algo.engine=batched: whole chunks of tasks per call
            losses, metrics = self.accumulate_batched(batch)
        else:
            for b in range(n):
                with self.gradient_sync(last=b == n - 1):
                    loss, metric = self.accumulate_task(batch[b], 1.0 / n)
                losses.append(loss)
                metrics.append(metric)
        loss = torch.stack(losses).mean()
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"train/loss is {loss.item()} at epoch {self.current_epoch}, step {self.global_step}: "
                f"training diverged. Lower algo.inner_lr (now {self.inner_lr}) or algo.meta_lr "
                f"(now {self.meta_lr}), or check the data for NaN values.")
        optimizer.step()
        self.step_lr_schedulers("step")
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log(f"train/{self.metric}", torch.stack(metrics).mean(), prog_bar=self.metric == "acc", batch_size=n)
        return loss

    def on_train_epoch_end(self) -> None:
        self.step_lr_schedulers("epoch")

    def step_lr_schedulers(self, interval: str) -> None:
        """Manual optimisation: Lightning leaves stepping to us; each scheduler steps at the interval
        its config declares ("epoch" for ``lr_scheduler``, "step" e.g. for Reptile's annealing)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval:
                config.scheduler.step()

    def configure_optimizers(self):
        optimizer = torch.optim.Adam(self.parameters(), lr=self.meta_lr)
        scheduler = self.lr_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def lr_scheduler(self, optimizer):
        """Outer learning-rate schedule stepped once per epoch; none by default."""
        return None

    # -- evaluation (identical for every algorithm) --------------------------------------------
    def evaluate_task(self, task: Task, steps: int) -> tuple[Tensor, Tensor]:
        """Query loss and metric after 0, 1, ..., ``steps`` inner steps (first order: no outer grad)."""
        losses, scores = [], []

        def score_query(learner: nn.Module, step: int) -> None:
            with torch.no_grad():
                prediction = learner(task.query_x, step=max(step, 0))
                losses.append(self.loss_fn(prediction, task.query_y))
                scores.append(self.score(prediction, task.query_y))

        score_query(self.backbone, -1)
        with torch.enable_grad():  # adaptation needs gradients even under validation/test
            self.adapt(task, steps, first_order=True, on_step=score_query)
        return torch.stack(losses), torch.stack(scores)

    def _eval_step(self, stage: str, batch: TaskBatch) -> None:
        records = self.records.setdefault(stage, EpisodeRecords())
        for b in range(len(batch)):
            loss, metric = self.evaluate_task(batch[b], self.test_inner_steps)
            records.add(batch.index[b], loss, metric)

    def _eval_epoch_end(self, stage: str) -> None:
        records = self.records.pop(stage, None)
        if records is None or not records.index:
            return
        index, loss, values = records.stacked()
        if self.trainer.world_size > 1:  # every rank gathers all episodes, so all log the same value
            index, loss, values = (self.all_gather(t).flatten(0, 1) for t in (index, loss, values))
        index, loss, values = unique_episodes(index, loss, values)
        diverged = int((~torch.isfinite(values[:, -1])).sum())
        if diverged:  # adaptation blew up (inner lr too large for this many test steps): say so
            rank_zero_warn(f"{stage}: adaptation diverged (non-finite {self.metric}) on {diverged} of "
                           f"{values.shape[0]} episodes after {values.shape[1] - 1} inner steps; the {stage} "
                           f"mean is NaN. Lower algo.inner_lr or algo.test_inner_steps.")
        summary = summarise(stage, self.metric, loss, values)
        for key, value in summary.items():
            self.log(key, value, prog_bar=key == f"{stage}/{self.metric}", sync_dist=False)
        by_step, ci_by_step = curve(values)
        self.eval_results[stage] = {**summary, f"{stage}/{self.metric}_by_step": by_step,
                                    f"{stage}/{self.metric}_ci95_by_step": ci_by_step}

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
