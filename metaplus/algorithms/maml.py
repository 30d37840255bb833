"""MAML (Finn et al. 2017) and MAML++'s six fixes (Antoniou et al. 2019) as independent switches.

MAML is the base episodic learner: adapt every parameter by SGD on the support set, meta-learn the
initialisation from the query loss; ``first_order=True`` is FOMAML. Each MAML++ switch overrides
exactly one hook (``algo=mamlpp`` turns all six on):

- ``msl``  multi-step loss: the query loss after every inner step, weighted by the annealed
  schedule of :func:`metaplus.schedules.msl_weights`, for ``msl_epochs`` epochs  (``task_loss``)
- ``da``   derivative-order annealing: first order for ``da_epochs`` epochs  (``training_first_order``)
- ``bnrs`` per-step BN running statistics  } the backbone's :class:`PerStepBatchNorm2d` layers are
- ``bnwb`` per-step BN weights and biases  } configured once here; with ``bnwb`` the BN affine
  parameters are meta-learned only, never adapted  (``adapted_names``)
- ``lslr`` a learned inner learning rate per parameter tensor and per step  (``inner_rule``)
- ``ca``   cosine annealing of the outer learning rate to ``min_meta_lr``: the base learner's
  ``lr_schedule=cosine``, switched on by its MAML++ name

``adapt_bn_affine`` (default false, as Finn's and the MAML++ code) lets plain MAML adapt the batch-norm
weights and biases in the inner loop; off, they are meta-learned only, so the MAML++ ablation rows
differ in one switch at a time. ``bn_stats`` says how BN normalises: ``batch`` (batch statistics always, as the reference code:
reproduces the published numbers) or ``running`` (evaluation uses the running statistics of the
matching step: BNRS as the paper's text describes it). See :mod:`metaplus.nn.batchnorm`.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn

from metaplus.algorithms.base import EpisodicLearner
from metaplus.data.episodes import Task
from metaplus.errors import ConfigError, check, check_choice, check_int
from metaplus.inner import checkpointed_engine
from metaplus.inner.clone_adapt import UpdateRule
from metaplus.inner.learned_rates import LearnedRates
from metaplus.nn.batchnorm import STATS_MODES, batchnorm_parameter_names, configure_batchnorm
from metaplus.schedules import first_order_at, msl_weights

#: LSLR's ParameterDict keys join the parameter name's parts with "-" (``blocks-0-conv-weight``): the
#: keys of every MAML++ checkpoint so far, kept so that they load.
LSLR_KEY_SEPARATOR = "-"


class MAML(EpisodicLearner):
    def __init__(
        self,
        backbone: nn.Module,
        task_type: str,
        name: str = "maml",
        msl: bool = False,
        msl_epochs: int = 10,
        da: bool = False,
        da_epochs: int = 50,
        bnrs: bool = False,
        bnwb: bool = False,
        lslr: bool = False,
        ca: bool = False,
        bn_stats: str = "batch",
        adapt_bn_affine: bool = False,
        checkpoint_steps: bool = False,
        **shared: Any,
    ):
        switches = dict(msl=msl, da=da, bnrs=bnrs, bnwb=bnwb, lslr=lslr, ca=ca)
        flags = {**switches, "adapt_bn_affine": adapt_bn_affine, "checkpoint_steps": checkpoint_steps}
        for key, value in flags.items():
            check(key, value, isinstance(value, bool), "true or false")
        if ca:  # CA is the base learner's cosine outer schedule, switched on by name
            shared["lr_schedule"] = "cosine"
        super().__init__(backbone, task_type, name=name, **shared)
        check_int("msl_epochs", msl_epochs, 0)
        check_int("da_epochs", da_epochs, 0)
        check_choice("bn_stats", bn_stats, set(STATS_MODES))
        self.switches = switches
        if checkpoint_steps:
            self.inner = checkpointed_engine(self.inner)
        self.msl, self.msl_epochs, self.da, self.da_epochs = msl, msl_epochs, da, da_epochs
        self.lslr, self.ca, self.bn_stats = lslr, ca, bn_stats
        self.configure_backbone_batchnorm(self.inner_steps, bnrs, bnwb, bn_stats, adapt_bn_affine)
        self.inner_lrs = self.make_inner_lrs(self.inner_steps, self.inner_lr) if lslr else None
        self.msl_weights_cache: tuple[int, Tensor] | None = None  # (epoch, weights on the device)

    # -- construction ---------------------------------------------------------------------------
    def configure_backbone_batchnorm(
        self, steps: int, bnrs: bool, bnwb: bool, bn_stats: str, adapt_bn_affine: bool
    ) -> None:
        """BNRS/BNWB/bn_stats reshape the backbone's per-step BN layers, before the optimizer exists."""
        try:
            layers = configure_batchnorm(
                self.backbone, steps, per_step_stats=bnrs, per_step_affine=bnwb, stats=bn_stats
            )
        except TypeError as err:
            raise ConfigError("bnrs" if bnrs else "bnwb", str(err)) from None
        if (bnrs or bnwb or bn_stats != "batch") and not layers:
            rank_zero_warn(
                f"algo.bnrs/bnwb/bn_stats have no effect: {type(self.backbone).__name__} has "
                f"no metaplus.nn.PerStepBatchNorm2d layer"
            )
        # The BN weights and biases are meta-learned only: Finn's MAML code and the MAML++ code never
        # adapt them in the inner loop (adapt_bn_affine=true does, but never with BNWB's per-step sets).
        frozen = bnwb or not adapt_bn_affine
        self.frozen_in_inner_loop = batchnorm_parameter_names(self.backbone) if frozen else set()

    def make_inner_lrs(self, steps: int, inner_lr: float) -> LearnedRates:
        """LSLR: one learning rate per adapted tensor and per step, registered here so Adam trains it."""
        return LearnedRates.per_step_rates(sorted(self.adapted_names()), steps, inner_lr, LSLR_KEY_SEPARATOR)

    @property
    def lr_names(self) -> dict[str, str]:
        """Adapted parameter name -> the key of its rates in ``inner_lrs`` (LSLR only)."""
        return self.inner_lrs.key_of

    # -- the hooks each switch overrides ---------------------------------------------------------
    def adapted_names(self) -> set[str]:
        return super().adapted_names() - self.frozen_in_inner_loop

    def inner_rule(self) -> UpdateRule:
        if self.inner_lrs is None:
            return super().inner_rule()
        return self.inner_lrs.rule()

    def training_first_order(self) -> bool:
        if self.da and first_order_at(self.current_epoch, self.da_epochs):
            return True
        return self.first_order

    def current_msl_weights(self) -> Tensor | None:
        """This epoch's MSL weights on the learner's device, or None when only the final step counts
        (MSL off or over). Computed once per epoch (``on_train_epoch_start``) and kept on the device:
        made on the CPU for every task, they were a host->device copy per task."""
        epoch = self.current_epoch
        if not self.msl or self.inner_steps < 1 or epoch >= self.msl_epochs:
            return None
        cached = self.msl_weights_cache
        if cached is None or cached[0] != epoch or cached[1].device != self.device:
            cached = (epoch, msl_weights(self.inner_steps, epoch, self.msl_epochs).to(self.device))
            self.msl_weights_cache = cached
        return cached[1]

    def query_step_weights(self) -> Tensor | None:
        return self.current_msl_weights()

    def task_loss(self, task: Task) -> tuple[Tensor, Tensor]:
        weights = self.current_msl_weights()
        if weights is None:
            return super().task_loss(task)
        losses, predictions = [], []

        def score_query(learner: nn.Module, step: int) -> None:
            predictions.append(learner(task.query_x, step=step))
            losses.append(self.loss_fn(predictions[-1], task.query_y))

        self.adapt(task, self.inner_steps, self.training_first_order(), on_step=score_query)
        loss = (weights.to(losses[0]) * torch.stack(losses)).sum()
        return loss, self.score(predictions[-1], task.query_y).detach()

    # -- what a researcher wants to see --------------------------------------------------------
    def on_fit_start(self) -> None:
        for warning in self.inert_switches(self.trainer.max_epochs):
            rank_zero_warn(warning)

    def inert_switches(self, max_epochs: int | None) -> list[str]:
        """Switches that are on but change nothing in this run, each named with the keys to change."""
        found = []
        if self.da and self.first_order:
            found.append(
                "algo.da=true with algo.first_order=true: derivative-order annealing switches from first to "
                "second order, and this run is first order throughout, so DA changes nothing; set "
                "algo.first_order=false"
            )
        elif self.da and isinstance(max_epochs, int) and self.da_epochs >= max_epochs:
            found.append(
                f"algo.da=true with algo.da_epochs={self.da_epochs} >= trainer.max_epochs={max_epochs}: "
                f"training never reaches second order (the whole run is first order); lower "
                f"algo.da_epochs or set algo.da=false"
            )
        if self.msl and self.inner_steps <= 1:
            found.append(
                f"algo.msl=true with algo.inner_steps={self.inner_steps}: the multi-step loss weights the "
                f"query loss after each inner step, and with one step that is the final-step loss alone, "
                f"so MSL changes nothing here; set algo.inner_steps above 1 (MAML++ uses 5)"
            )
        elif self.msl and isinstance(max_epochs, int) and self.msl_epochs > max_epochs:
            found.append(
                f"algo.msl_epochs={self.msl_epochs} > trainer.max_epochs={max_epochs}: the multi-step loss "
                f"never anneals to the final step within this run"
            )
        if self.switches["bnrs"] and self.bn_stats == "batch":
            found.append(
                "algo.bnrs=true with algo.bn_stats=batch: the per-step running statistics are kept (as the "
                "MAML++ code does) but never used to normalise, so BNRS does not change the results; "
                "algo.bn_stats=running uses them at evaluation"
            )
        if self.ca and self.min_meta_lr == self.meta_lr:
            found.append(
                f"algo.ca=true with algo.min_meta_lr = algo.meta_lr = {self.meta_lr}: the cosine schedule is "
                f"constant (as MAML++'s released mini-ImageNet config)"
            )
        return found

    def on_train_epoch_start(self) -> None:
        self.current_msl_weights()  # once per epoch, so no training step moves them to the device
        self.log("train/derivative_order", 1.0 if self.training_first_order() else 2.0)
        if self.msl and self.inner_steps >= 1:
            weights = msl_weights(self.inner_steps, self.current_epoch, self.msl_epochs)
            for step, weight in enumerate(weights.tolist()):
                self.log(f"msl/weight_step{step + 1}", weight)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        for name, value in self.learned_inner_lrs().items():
            self.log(name, value)

    def learned_inner_lrs(self) -> dict[str, float]:
        """``inner_lr/<parameter>/step<k>`` for every learned rate, plus the mean over tensors per step."""
        if self.inner_lrs is None:
            return {}
        table = self.inner_lrs.table()
        out = {f"inner_lr/{name}/step{k + 1}": float(v) for name, rates in table.items() for k, v in enumerate(rates)}
        mean = torch.stack(list(table.values())).mean(dim=0)
        out.update({f"inner_lr/mean/step{k + 1}": float(v) for k, v in enumerate(mean)})
        return out
