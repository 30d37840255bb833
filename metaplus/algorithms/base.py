"""The episodic LightningModule every algorithm extends.

One ``training_step`` is one meta-iteration over a meta-batch of tasks. Each task's outer loss is
back-propagated as soon as it is computed (``manual_backward`` per task, gradients accumulated), so
a task's graph is freed before the next is built: memory stays flat in the meta-batch size. Under
DDP, gradients are synchronised only on the last task of the step. On the CPU with several threads,
the tasks run at once on worker threads instead, with the same meta-gradient
(:mod:`metaplus.algorithms.task_workers`, ``algo.task_workers``).

Subclasses override small hooks, not the loop:
- ``adapted_names()``   which backbone parameters the inner loop changes (default: all),
- ``inner_rule()``      how an inner gradient becomes an update (default: SGD with ``inner_lr``),
- ``task_loss(task)``   the outer loss of one task (default: query loss after adaptation),
- ``accumulate_task``   how that loss becomes gradients (Reptile replaces it),
- ``outer_optimizer`` (Adam; Reptile: SGD) and ``lr_scheduler``. Every learner has the outer schedule
  ``lr_schedule`` = constant | cosine | linear down to ``min_meta_lr``, per epoch or per step, with an
  optional warm-up, and meta-gradient clipping (``grad_clip_value`` / ``grad_clip_norm``).
Validation and test are the same code for every algorithm (``evaluate_task``).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric

from metaplus.algorithms.adapted import AdaptedLearner, adapt_to
from metaplus.algorithms.task_workers import (
    accumulate_on_workers,
    check_task_workers,
    task_memory_probe,
    task_workers,
)
from metaplus.data.episodes import Task, TaskBatch
from metaplus.errors import ConfigError, check, check_choice, check_int, check_positive, metric_name
from metaplus.evaluation import EVAL_CURVES, EpisodeCurves, check_eval_curve, curve, episode_score, summarise
from metaplus.inner import make_engine, sgd
from metaplus.threads import map_on_workers


class NonFiniteLossError(FloatingPointError):
    """Training produced NaN/inf: stop at once with the step and the likely culprits."""


#: Precisions that compute in float16 (Lightning's names, as given or as ``trainer.precision`` reports them).
FP16_PRECISIONS = ("16", "16-mixed", "16-true")


def refuse_fp16_inner_loop(precision: Any) -> None:
    """Refuse float16 before training. The inner loop calls ``autograd.grad`` on the unscaled loss:
    in fp16 small inner gradients underflow to zero, and an overflow stops the run as a non-finite
    loss instead of letting the GradScaler skip the step. bf16 has fp32's range, so it has neither
    problem; GPUs without bf16 (V100, T4) train in fp32."""
    if str(precision) in FP16_PRECISIONS:
        raise ConfigError(
            "trainer.precision",
            f"{precision!r} is not supported: the inner loop would differentiate "
            f"an unscaled float16 loss (small inner gradients underflow to zero, an "
            f"overflow stops the run instead of skipping the step). Use "
            f"trainer.precision=bf16-mixed on GPUs with bf16 (A100, H100, RTX 30xx "
            f"and later); on GPUs without bf16 (V100, T4) use trainer.precision=32-true",
        )


LR_SCHEDULES = ("constant", "cosine", "linear")
LR_INTERVALS = ("epoch", "step")


def outer_lr_factor(t: int, total: int, schedule: str, floor: float, warmup: int = 0) -> float:
    """The outer learning rate after ``t`` scheduler steps of ``total``, as a fraction of ``meta_lr``.

    A linear warm-up over the first ``warmup`` steps, then ``constant`` (1), ``cosine`` (from 1 to
    ``floor`` along half a cosine: MAML++'s CA) or ``linear`` (from 1 to ``floor``: Reptile's eps).
    ``floor`` is ``min_meta_lr / meta_lr``; past ``total`` the schedule stays at its end value.
    """
    if t < warmup:
        return (t + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min((t - warmup) / max(total - warmup, 1), 1.0)
    if schedule == "cosine":
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 + (floor - 1.0) * progress


class EpisodicLearner(L.LightningModule):
    """The constructor arguments here are shared by every learner: subclasses declare only their
    own and forward the rest (``**shared``), and the config checker reads both signatures."""

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
        lr_schedule: str = "constant",
        min_meta_lr: float = 0.0,
        lr_interval: str = "epoch",
        warmup_steps: int = 0,
        grad_clip_value: float | None = None,
        grad_clip_norm: float | None = None,
        eval_curve: str = "test",
        eval_curve_episodes: int | None = 100,
        engine: str = "l2l",
        chunk_size: int | None = None,
        task_workers: int | None = None,
    ):
        super().__init__()
        check_choice("task_type", task_type, {"regression", "classification"})
        check_int("inner_steps", inner_steps, 0)
        test_inner_steps = inner_steps if test_inner_steps is None else test_inner_steps
        check_int("test_inner_steps", test_inner_steps, 0)
        check_positive("inner_lr", inner_lr)
        check_positive("meta_lr", meta_lr)
        check("first_order", first_order, isinstance(first_order, bool), "true or false")
        check_choice("lr_schedule", lr_schedule, set(LR_SCHEDULES))
        check_choice("lr_interval", lr_interval, set(LR_INTERVALS))
        check(
            "min_meta_lr",
            min_meta_lr,
            isinstance(min_meta_lr, (int, float)) and not isinstance(min_meta_lr, bool) and 0 <= min_meta_lr <= meta_lr,
            f"a number in [0, meta_lr={meta_lr}]",
        )
        check_int("warmup_steps", warmup_steps, 0)
        for key, value in (("grad_clip_value", grad_clip_value), ("grad_clip_norm", grad_clip_norm)):
            check(
                key,
                value,
                value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0),
                "null (off) or a number > 0",
            )
        check_eval_curve(eval_curve)
        check(
            "eval_curve_episodes",
            eval_curve_episodes,
            eval_curve_episodes is None
            or (
                isinstance(eval_curve_episodes, int)
                and not isinstance(eval_curve_episodes, bool)
                and eval_curve_episodes >= 1
            ),
            "null (every episode) or an integer >= 1",
        )
        check_task_workers(task_workers)
        self.save_hyperparameters(ignore=["backbone", "inner_loop"])
        self.automatic_optimization = False  # per-task backward: see module docstring
        self.backbone = backbone
        self.inner = inner_loop if inner_loop is not None else make_engine(engine, chunk_size)
        if getattr(self.inner, "batched", False) and not self.supports_batched_engine:
            raise ConfigError(
                "engine",
                f"{engine!r} is invalid for {type(self).__name__}: its training step is "
                f"not a query loss after adaptation; use engine=l2l",
            )
        check_backbone = getattr(self.inner, "check_backbone", None)
        if check_backbone is not None:  # an engine written for one backbone (grouped: Conv-4) says so now
            check_backbone(backbone)
        self.task_type, self.metric = task_type, metric_name(task_type)
        self.inner_steps, self.test_inner_steps = inner_steps, test_inner_steps
        self.inner_lr, self.meta_lr, self.first_order = inner_lr, meta_lr, first_order
        self.lr_schedule, self.min_meta_lr, self.lr_interval = lr_schedule, float(min_meta_lr), lr_interval
        self.warmup_steps = warmup_steps
        self.grad_clip_value, self.grad_clip_norm = grad_clip_value, grad_clip_norm
        self.eval_curve, self.eval_curve_episodes = eval_curve, eval_curve_episodes
        self.task_workers = task_workers  # metaplus.algorithms.task_workers
        self.task_memory: tuple[int, int] | None = None  # (epoch, bytes of one task's graph) measured then
        self.task_memory_logged: tuple[int, int] | None = None  # (epoch, workers) last logged
        # torchmetrics does the metric bookkeeping: per-episode curves gathered across DDP ranks,
        # and the meta-batch means of the training loss and metric.
        self.episode_curves = nn.ModuleDict({stage: EpisodeCurves() for stage in ("val", "test")})
        # The full per-step curves of the episodes in the curve's subset (``eval_curve_episodes``).
        self.step_curves = nn.ModuleDict({stage: EpisodeCurves() for stage in ("val", "test")})
        self.host_index: list[int] | None = None  # the batch's episode indices, read before its transfer
        # nan_strategy="disable": MeanMetric's default NaN check reads the device every step (a
        # non-finite loss is caught by ``check_finite`` instead).
        self.train_means = nn.ModuleDict({key: MeanMetric(nan_strategy="disable") for key in ("loss", self.metric)})
        # The logged outer learning rate, kept on the learner's device: a Python float handed to
        # ``self.log`` becomes a host->device copy every step. Not saved (the scheduler holds the rate).
        self.register_buffer("logged_meta_lr", torch.tensor(float(meta_lr)), persistent=False)
        self.first_nonfinite_step: Tensor | None = None  # device-side record, see ``check_finite``
        # The per-step adaptation curves of the last val/test evaluation, by stage: lists, which
        # ``self.log`` cannot hold (it logs scalars). The scalar metrics are logged, and
        # results.json takes them from what trainer.validate/test return and the curves from here.
        self.adaptation_curves: dict[str, dict[str, list[float]]] = {}
        # Set to {} before ``trainer.test`` when the best checkpoint's top-k ensemble follows: each test
        # episode's final query predictions, by episode index, are kept there for the ensemble's first
        # member (the same checkpoint), so that they are not computed twice (``evaluate_ensemble``).
        self.test_predictions: dict[int, Tensor] | None = None

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
        return episode_score(self.task_type, prediction, target)

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
        return self.inner.adapt(
            self.backbone,
            task.support_x,
            task.support_y,
            loss_fn=self.loss_fn,
            steps=steps,
            adapted=self.adapted_names(),
            rule=self.inner_rule(),
            first_order=first_order,
            on_step=on_step,
        )

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
                    self.backbone,
                    batch.support_x[chunk],
                    batch.support_y[chunk],
                    batch.query_x[chunk],
                    batch.query_y[chunk],
                    loss_fn=self.loss_fn,
                    steps=self.inner_steps,
                    adapted=self.adapted_names(),
                    rule=self.inner_rule(),
                    first_order=self.training_first_order(),
                    step_weights=self.query_step_weights(),
                )
                self.manual_backward(loss.sum() / n)
            losses += list(loss.detach())
            metrics += [self.score(p, y).detach() for p, y in zip(prediction, batch.query_y[chunk])]
        return losses, metrics

    # -- training ------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        # Every fit/validate/test, before its first step (run.build already checked the config; this
        # covers a Trainer built by hand).
        refuse_fp16_inner_loop(self.trainer.precision)

    def gradient_sync(self, last: bool):
        """DDP: all-reduce gradients only on the meta-batch's last backward."""
        block = getattr(self.trainer.strategy, "block_backward_sync", None)
        return nullcontext() if last or block is None else block()

    def accumulate_meta_batch(self, batch: TaskBatch) -> tuple[list[Tensor], list[Tensor]]:
        """Add the meta-batch's mean meta-gradient to ``.grad``; return per-task (losses, metrics)."""
        n = len(batch)
        if getattr(self.inner, "batched", False):  # algo.engine=batched: whole chunks of tasks per call
            return self.accumulate_batched(batch)
        if (workers := task_workers(self, n)) > 1:  # CPU: tasks at once on worker threads
            return accumulate_on_workers(self, batch, workers)
        losses, metrics = [], []
        for b in range(n):
            with self.gradient_sync(last=b == n - 1), task_memory_probe(self, n) if b == 0 else nullcontext():
                loss, metric = self.accumulate_task(batch[b], 1.0 / n)
            losses.append(loss)
            metrics.append(metric)
        return losses, metrics

    def training_step(self, batch: TaskBatch, batch_idx: int) -> Tensor:
        optimizer = self.optimizers()
        optimizer.zero_grad()
        n = len(batch)
        losses, metrics = self.accumulate_meta_batch(batch)
        loss = torch.stack(losses).mean()
        self.check_finite(loss)
        self.logged_meta_lr.fill_(optimizer.param_groups[0]["lr"])  # a kernel argument, not a copy
        self.log("train/meta_lr", self.logged_meta_lr, batch_size=n)
        optimizer.step()
        self.step_lr_schedulers("step")
        # Logged per step: the mean over this meta-batch's tasks (MeanMetric's forward value).
        self.train_means["loss"](torch.stack(losses))
        self.train_means[self.metric](torch.stack(metrics))
        self.log("train/loss", self.train_means["loss"], prog_bar=True, batch_size=n)
        self.log(f"train/{self.metric}", self.train_means[self.metric], prog_bar=self.metric == "acc", batch_size=n)
        return loss

    def check_finite(self, loss: Tensor, defer: bool | None = None) -> None:
        """Stop on a NaN/inf training loss. On the CPU reading the loss costs nothing: stop at once,
        before the optimizer step. On an accelerator reading it would make the host wait for the
        device every step, so the first non-finite step is recorded on the device and read only
        every ``trainer.log_every_n_steps`` steps (when Lightning reads the logged metrics anyway)
        and at the end of each epoch (``raise_if_nonfinite``). ``defer`` overrides the choice."""
        if not (loss.device.type != "cpu" if defer is None else defer):
            if not torch.isfinite(loss):
                self.raise_nonfinite(loss.item(), self.global_step)
            return
        if self.first_nonfinite_step is None or self.first_nonfinite_step.device != loss.device:
            self.first_nonfinite_step = torch.full((), -1, dtype=torch.long, device=loss.device)
        seen = torch.isfinite(loss) | (self.first_nonfinite_step >= 0)
        self.first_nonfinite_step = torch.where(seen, self.first_nonfinite_step, self.global_step)
        every = getattr(self._trainer, "log_every_n_steps", 0) if self._trainer is not None else 0
        if every and (self.global_step + 1) % every == 0:
            self.raise_if_nonfinite()

    def raise_if_nonfinite(self) -> None:
        """Raise if ``check_finite`` recorded a non-finite loss on the device (one read)."""
        if self.first_nonfinite_step is not None:
            step = int(self.first_nonfinite_step)
            if step >= 0:
                self.raise_nonfinite(float("nan"), step)

    def raise_nonfinite(self, value: float, step: int) -> None:
        raise NonFiniteLossError(
            f"train/loss is {value} at epoch {self.current_epoch}, step {step}: "
            f"training diverged. Lower algo.inner_lr (now {self.inner_lr}) or algo.meta_lr "
            f"(now {self.meta_lr}), or check the data for NaN values."
        )

    def on_train_epoch_end(self) -> None:
        self.raise_if_nonfinite()
        self.step_lr_schedulers("epoch")

    def step_lr_schedulers(self, interval: str) -> None:
        """Manual optimisation: Lightning leaves stepping to us; each scheduler steps at the interval
        its config declares ("epoch" for ``lr_scheduler``, "step" e.g. for Reptile's annealing)."""
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval:
                config.scheduler.step()

    def on_before_optimizer_step(self, optimizer) -> None:
        # Lightning calls this inside ``optimizer.step()``, after a loss-scaling precision (16-mixed's
        # GradScaler) has unscaled the gradients: clipping earlier would clip the scaled gradient.
        self.clip_meta_gradient(optimizer)

    def clip_meta_gradient(self, optimizer) -> None:
        """Clamp the meta-gradient element-wise (``grad_clip_value``, as the MAML++ code on
        mini-ImageNet) and/or rescale it to a maximal norm (``grad_clip_norm``). Runs in
        ``on_before_optimizer_step``: after the meta-batch's last backward, when DDP has averaged the
        gradients (every rank clips alike) and mixed precision has unscaled them."""
        if self.grad_clip_value is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip_value, gradient_clip_algorithm="value")
        if self.grad_clip_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip_norm, gradient_clip_algorithm="norm")

    def outer_optimizer(self) -> torch.optim.Optimizer:
        """The meta-optimizer: Adam over every parameter (meta-parameters such as learned rates too)."""
        return torch.optim.Adam(self.parameters(), lr=self.meta_lr)

    def configure_optimizers(self):
        optimizer = self.outer_optimizer()
        scheduler = self.lr_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.lr_interval}}

    def schedule_length(self) -> int:
        """Scheduler steps in the whole run: epochs or meta-iterations, per ``lr_interval``."""
        if self.lr_interval == "step":
            return int(self.trainer.estimated_stepping_batches)
        epochs = self.trainer.max_epochs
        if not isinstance(epochs, int) or epochs < 1:
            raise ConfigError(
                "trainer.max_epochs",
                f"{epochs!r} is invalid: algo.lr_schedule={self.lr_schedule} "
                f"anneals over max_epochs, which must be an integer >= 1",
            )
        return epochs

    def lr_scheduler(self, optimizer):
        """The outer schedule (``lr_schedule``, ``min_meta_lr``, ``warmup_steps``), stepped every
        ``lr_interval``; none for a constant rate without warm-up."""
        if self.lr_schedule == "constant" and not self.warmup_steps:
            return None
        total, floor = self.schedule_length(), self.min_meta_lr / self.meta_lr
        schedule, warmup = self.lr_schedule, self.warmup_steps
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda t: outer_lr_factor(t, total, schedule, floor, warmup)
        )

    # -- use as a library (metaplus.load) -------------------------------------------------------
    def adapt_to(self, support_x: Tensor, support_y: Tensor, steps: int | None = None) -> AdaptedLearner:
        """Adapt to one support set as evaluation does; ``.predict(x)`` on the result. See
        :mod:`metaplus.algorithms.adapted`."""
        return adapt_to(self, support_x, support_y, steps)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        if "backbone" not in kwargs:  # the backbone is a module, not a hyperparameter: say where it comes from
            raise TypeError(
                f"{cls.__name__}.load_from_checkpoint needs backbone=... (rebuilt from the run's config); "
                f"use metaplus.load('{checkpoint_path}') instead, which rebuilds it from the run directory"
            )
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    # -- evaluation (identical for every algorithm) --------------------------------------------
    def start_episode(self) -> None:
        """Called before each evaluation episode's adaptation (``evaluate_task``, ``adapted_prediction``,
        ``adapt_to``); nothing by default (pretrain zeroes its episode head)."""

    def curve_at(self, stage: str) -> bool:
        """Whether ``stage`` ("val"/"test") scores the query set after every inner step (``eval_curve``)."""
        return stage in EVAL_CURVES[self.eval_curve]

    def evaluate_task(
        self,
        task: Task,
        steps: int,
        per_step: bool = True,
        final_prediction: list[Tensor] | None = None,
        score_before: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Query loss and metric before adaptation and after ``steps`` inner steps (first order: no
        outer grad). ``per_step=True``: after every step, ``steps + 1`` values (0, 1, ..., steps);
        ``per_step=False``: two values, before adaptation and after the last step, and the query set is
        scored only those two times. ``final_prediction``: a list that receives the query predictions
        after the last step (what ``adapted_prediction`` returns). ``score_before=False`` (with
        ``per_step=False`` and ``steps > 0``): the query set is scored once, after the last step, and
        the "before" values are NaN (evaluation scores step 0 on the curve's episodes only)."""
        self.start_episode()
        skip_before = not score_before and not per_step and steps > 0
        losses, scores, predictions = [], [], []

        def score_query(learner: nn.Module, step: int) -> None:
            with torch.no_grad():
                prediction = learner(task.query_x, step=max(step, 0))
                losses.append(self.loss_fn(prediction, task.query_y))
                scores.append(self.score(prediction, task.query_y))
                predictions[:] = [prediction]

        def score_last(learner: nn.Module, step: int) -> None:
            if step == steps - 1:
                score_query(learner, step)

        if not skip_before:
            score_query(self.backbone, -1)
        if steps == 0 and not per_step:  # nothing to adapt: the last step is step 0
            losses, scores = losses * 2, scores * 2
        elif steps > 0:
            with torch.enable_grad():  # adaptation needs gradients even under validation/test
                self.adapt(task, steps, first_order=True, on_step=score_query if per_step else score_last)
        if skip_before:  # NaN on the device: no host round-trip
            losses.insert(0, torch.full_like(losses[0], float("nan")))
            scores.insert(0, torch.full_like(scores[0], float("nan")))
        if final_prediction is not None:
            final_prediction.extend(predictions)
        return torch.stack(losses), torch.stack(scores)

    def adapted_prediction(self, task: Task, steps: int) -> Tensor:
        """Query predictions after ``steps`` inner steps on the support set: the final step of
        ``evaluate_task``, as one prediction (the checkpoint ensemble averages these)."""
        self.start_episode()
        with torch.enable_grad():
            learner = self.adapt(task, steps, first_order=True)
        with torch.no_grad():
            return learner(task.query_x, step=max(steps - 1, 0))

    def supports_checkpoint_ensemble(self) -> bool:
        """Whether ``adapted_prediction`` works outside Lightning's evaluation loop (MT-net's masks
        are drawn by per-batch hooks, so it does not)."""
        return True

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """Keep the episode indices while they are on the host (evaluation picks the curve's episodes by
        them, MT-net seeds its noise with them): reading them after the batch went to the GPU would make
        every step wait for the device."""
        if isinstance(batch, TaskBatch) and batch.index.device.type == "cpu":
            self.host_index = batch.index.tolist()
        return batch

    def episode_indices(self, batch: TaskBatch) -> list[int]:
        """The batch's episode indices as read on the host before its transfer (else read now: a call
        outside Lightning's batch transfer)."""
        if self.host_index is None or len(self.host_index) != len(batch):
            return batch.index.tolist()
        return self.host_index

    def in_curve_subset(self, index: int) -> bool:
        """Whether episode ``index`` is one of the first ``eval_curve_episodes`` (by index: the same
        fixed episodes in every run), whose per-step curve is computed where ``curve_at`` asks for it.
        Scoring every step costs a query forward per inner step; the final-step metrics need two."""
        return self.eval_curve_episodes is None or index < self.eval_curve_episodes

    def evaluate_batched(self, batch: TaskBatch, steps: int, per_step: bool = True) -> tuple[Tensor, Tensor]:
        """``evaluate_task`` for every task of ``batch`` at once through the batched engine (chunks of
        ``algo.chunk_size`` tasks per vmapped call): query losses and metrics ``(T, S)``, the same
        columns as ``evaluate_task`` (before adaptation, then after every step or after the last)."""
        scored = list(range(steps + 1)) if per_step else [0, steps]
        losses, metrics = [], []
        with torch.no_grad():  # first order: torch.func.grad still takes the inner gradients
            for chunk in self.inner.chunks(len(batch)):
                loss, prediction = self.inner.scored_queries(
                    self.backbone,
                    batch.support_x[chunk],
                    batch.support_y[chunk],
                    batch.query_x[chunk],
                    batch.query_y[chunk],
                    loss_fn=self.loss_fn,
                    steps=steps,
                    adapted=self.adapted_names(),
                    rule=self.inner_rule(),
                    first_order=True,
                    scored=scored,
                )
                losses.append(loss)
                metrics += [
                    torch.stack([self.score(p, y) for p in per_task])
                    for per_task, y in zip(prediction, batch.query_y[chunk])
                ]
        return torch.cat(losses), torch.stack(metrics)

    #: Whether episodes may be evaluated concurrently, on threads sharing this learner: where evaluation
    #: is the plain adaptation (the learners that support the batched engine). Not pretrain (resets its
    #: head per episode), Reptile (its inner Adam) or MT-net (consumes queued mask noise in task order).
    @property
    def evaluates_episodes_concurrently(self) -> bool:
        return self.supports_batched_engine

    def evaluate_episodes(
        self, stage: str, batch: TaskBatch, indices: list[int], with_curve: bool
    ) -> dict[int, tuple[Tensor, Tensor, Tensor]]:
        """``evaluate_task`` of each task of ``batch`` (the per-step curve where asked), by position:
        (loss, metric, final query predictions). On the CPU with several torch threads and where it is
        safe (:attr:`evaluates_episodes_concurrently`), the episodes run on that many worker threads of one
        op thread each (:func:`metaplus.threads.map_on_workers`): a few-shot episode's ops are too small
        to keep several op threads busy."""

        def evaluate(_, b: int) -> tuple[Tensor, Tensor, Tensor]:
            final: list[Tensor] = []
            in_subset = self.in_curve_subset(indices[b])
            with torch.no_grad():  # grad mode is per thread: what Lightning's evaluation loop set
                loss, metric = self.evaluate_task(
                    batch[b], self.test_inner_steps, with_curve and in_subset, final, score_before=in_subset
                )
            return loss, metric, final[0]

        workers = 1
        if self.device.type == "cpu" and self.evaluates_episodes_concurrently:
            workers = max(min(torch.get_num_threads(), len(indices)), 1)
        return map_on_workers(evaluate, ((b, b) for b in range(len(indices))), [None] * workers, self.parameters())

    def _eval_step(self, stage: str, batch: TaskBatch) -> None:
        curves, with_curve = self.episode_curves[stage], self.curve_at(stage)
        indices = self.episode_indices(batch)
        batched = getattr(self.inner, "batched", False)
        if batched:  # algo.engine=batched evaluates whole chunks at once (every step, where a curve is asked for)
            losses, metrics = self.evaluate_batched(batch, self.test_inner_steps, per_step=with_curve)
        else:
            evaluated = self.evaluate_episodes(stage, batch, indices, with_curve)
        for b, index in enumerate(indices):
            per_step = with_curve and (batched or self.in_curve_subset(index))
            if batched:
                loss, metric = losses[b], metrics[b]
            else:
                loss, metric, final = evaluated[b]
                if stage == "test" and self.test_predictions is not None:
                    self.test_predictions[index] = final.detach()
            if per_step:
                if self.in_curve_subset(index):
                    self.step_curves[stage].update(batch.index[b], loss, metric)
                # what per_step=False returns (stack, not a list index: that would copy the index to the device)
                loss, metric = torch.stack((loss[0], loss[-1])), torch.stack((metric[0], metric[-1]))
            curves.update(batch.index[b], loss, metric)

    def _eval_epoch_end(self, stage: str) -> None:
        curves = self.episode_curves[stage]
        if curves.update_count == 0:
            return
        # Under DDP torchmetrics gathers every rank's episodes, so every rank logs the same value.
        index, loss, values = curves.compute()
        curves.reset()
        diverged = int((~torch.isfinite(values[:, -1])).sum())
        if diverged:  # adaptation blew up (inner lr too large for this many test steps): say so
            rank_zero_warn(
                f"{stage}: adaptation diverged (non-finite {self.metric}) on {diverged} of "
                f"{values.shape[0]} episodes after {self.test_inner_steps} inner steps; the {stage} "
                f"mean is NaN. Lower algo.inner_lr or algo.test_inner_steps."
            )
        # Before adaptation is scored on the curve's episodes (the first eval_curve_episodes) only.
        before = index < self.eval_curve_episodes if self.eval_curve_episodes is not None else None
        summary = summarise(stage, self.metric, loss, values, before=before)
        for key, value in summary.items():
            # float64: what trainer.validate/test return (and results.json records) is the exact mean;
            # a Python float would be logged as float32.
            self.log(
                key, torch.tensor(value, dtype=torch.float64), prog_bar=key == f"{stage}/{self.metric}", sync_dist=False
            )
        self.adaptation_curves.pop(stage, None)
        if self.curve_at(stage):  # the adaptation curve exists only where it was computed
            _, _, step_values = self.step_curves[stage].compute()
            self.step_curves[stage].reset()
            by_step, ci_by_step = curve(step_values)
            self.adaptation_curves[stage] = {
                f"{stage}/{self.metric}_by_step": by_step,
                f"{stage}/{self.metric}_ci95_by_step": ci_by_step,
            }

    def validation_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._eval_step("val", batch)

    def test_step(self, batch: TaskBatch, batch_idx: int) -> None:
        self._eval_step("test", batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")
