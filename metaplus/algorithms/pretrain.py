"""The pre-training baseline: ordinary supervised training, then fine-tuning on each test episode.

Training ignores the episode structure. Classification: every support and query example of the
meta-batch is labelled with its global class id (``Task.support_classes``/``query_classes``) and
classified by a separate pre-training head over all ``num_classes`` training classes, fed with the
features the backbone hands its own head. Regression: plain MSE of the backbone on all support and
query points, pooled over the meta-batch.

Evaluation is the base class's protocol on the same fixed episodes: fine-tune on the support set
with ``test_inner_steps`` SGD steps of ``inner_lr`` (``finetune: head`` adapts the head only,
``finetune: all`` every parameter) and score the query set. For classification the episode head
(``backbone.head``, one output per way) is reset to zeros before every episode, so each episode
starts from the pre-trained features and an unbiased classifier.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metaplus.algorithms.base import EpisodicLearner
from metaplus.data.episodes import Task
from metaplus.errors import check, check_choice, check_int
from metaplus.nn import head_parameter_names


class Pretrain(EpisodicLearner):
    supports_batched_engine = False  # algo.engine=batched computes query losses after adaptation only

    def __init__(
        self,
        backbone: nn.Module,
        task_type: str,
        test_inner_steps: int = 10,
        finetune: str = "head",
        name: str = "pretrain",
        **shared: Any,
    ):
        for key in ("inner_steps", "first_order"):  # fixed by what pre-training is
            check(key, shared.get(key), key not in shared, "left out: pre-training has no inner loop")
        # inner_steps=0: training never adapts; only evaluation fine-tunes.
        super().__init__(
            backbone, task_type, inner_steps=0, test_inner_steps=test_inner_steps, first_order=True, name=name, **shared
        )
        check_choice("finetune", finetune, {"head", "all"})
        self.finetune = finetune
        self.pretrain_head: nn.Module | None = None

    # -- pre-training --------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        """Build the all-classes head before the optimizer is made or a checkpoint is loaded."""
        super().setup(stage)
        if self.task_type != "classification" or self.pretrain_head is not None:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            raise RuntimeError("algo=pretrain needs the trainer's datamodule to know the number of training classes")
        source = datamodule.source("train")
        if not hasattr(source, "num_classes"):
            raise ValueError(
                f"algo=pretrain on classification needs a source with num_classes; {type(source).__name__} has none"
            )
        self.build_pretrain_head(source.num_classes)

    def build_pretrain_head(self, num_classes: int) -> None:
        check_int("num_classes", num_classes, 2)
        features = self.feature_dim()
        # Drawn from the run's seed in a forked RNG: the same head whether setup() runs right after the
        # model was built (one process) or after DDP's launcher has reseeded every process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch.initial_seed())
            head = nn.Linear(features, num_classes)
        self.pretrain_head = head.to(next(self.backbone.parameters()).device)

    def feature_dim(self) -> int:
        """Width of the head's input: the episode head must be a Linear layer (every metaplus backbone's is)."""
        head = self.backbone.head
        if isinstance(head, nn.Linear):
            return head.in_features
        raise TypeError(f"algo=pretrain needs backbone.head to be nn.Linear, got {type(head).__name__}")

    def features(self, x: Tensor) -> Tensor:
        """What the backbone feeds its head: captured by a hook, so backbones need no extra method."""
        captured: list[Tensor] = []
        handle = self.backbone.head.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        try:
            self.backbone(x)
        finally:
            handle.remove()
        return captured[0]

    def task_loss(self, task: Task) -> tuple[Tensor, Tensor]:
        """Supervised loss on all of the task's points (the base loop averages it over the meta-batch)."""
        x = torch.cat([task.support_x, task.query_x])
        if self.task_type == "regression":
            y = torch.cat([task.support_y, task.query_y])
            prediction = self.backbone(x)
            return self.loss_fn(prediction, y), self.score(prediction, y).detach()
        if task.support_classes is None or task.query_classes is None:
            raise ValueError(
                "algo=pretrain needs tasks with global class ids (support_classes/query_classes); "
                "this data source does not provide them"
            )
        if self.pretrain_head is None:
            raise RuntimeError("the pre-training head is missing: call setup() or build_pretrain_head() first")
        y = torch.cat([task.support_classes, task.query_classes])
        logits = self.pretrain_head(self.features(x))
        return self.loss_fn(logits, y), self.score(logits, y).detach()

    def may_leave_parameters_unused(self) -> bool:
        # Classification pre-trains through pretrain_head: the episode head gets no gradient.
        return self.task_type == "classification"

    # -- fine-tuning at evaluation -------------------------------------------------------------
    def adapted_names(self) -> set[str]:
        if self.finetune == "head":
            return head_parameter_names(self.backbone)
        return super().adapted_names()

    def start_episode(self) -> None:
        """Zero the episode head: each classification episode starts from an unbiased classifier."""
        if self.task_type == "classification":
            with torch.no_grad():
                for p in self.backbone.head.parameters():
                    p.zero_()
