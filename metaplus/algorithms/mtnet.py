"""T-nets and MT-nets (Lee & Choi, ICML 2018): a learned layerwise metric and update subspace.

**T-net** (``use_T``): every linear map W of the backbone (each ``nn.Linear``/``nn.Conv2d``) is
followed by a meta-learned square map T, initialised to the identity (a 1x1 channel-mixing conv for
convolutions; see :mod:`metaplus.nn.transform`). The inner loop adapts W only; T is excluded from
``adapted_names`` and learned by the outer loop, so the effective inner update of the product T W is
warped by T (a learned metric).

**MT-net** (``use_M``): the inner update of each W is further restricted by a binary mask M,
W <- W - alpha * M (.) grad_W L  (``inner_rule``). M is sampled from meta-learned logits zeta with
the straight-through Gumbel-softmax over the two classes {update, keep}: the forward value is the
hard 0/1 sample, the gradient is that of the relaxed sample, so zeta is trained by the outer loss.
P(M = 1) = sigmoid(zeta) whatever the temperature; the temperature only shapes the gradient.

Options and how they relate to the reference code (github.com/yoonholee/MT-net, ``maml.py``):
- ``share_M=true`` (every experiment script of the reference): one mask entry per *output unit*
  (row of a Linear weight, output channel of a Conv2d weight), shared by every weight of that row
  and by the unit's bias, which is masked the same way (the reference's ``get_mask`` looks up the
  bias's mask by its layer number). ``share_M=false``: one mask entry per weight and bias entry. In
  the reference code ``share_M`` means exactly this (its flag help: "share masks between weights
  that contribute to the same activation"); it does not decide how often masks are drawn.
- ``mask_per=task`` (the reference: masks are drawn inside the per-task function, once per task and
  reused by every inner step) or ``mask_per=batch`` (one draw shared by the tasks of a meta-batch).
  Quirk not reproduced: with ``share_M=false`` the reference redraws the mask at every inner step.
- ``temperature`` (reference ``temp``, 1) and ``logit_init`` (reference ``logit_init``, 0, i.e.
  P(update) = 0.5 at the start). Both mask layouts start from the constant ``logit_init`` (the
  reference draws per-entry logits from a truncated normal instead).
- Parameters that are not linear maps (the Conv-4's batch-norm affine parameters) are adapted as in
  MAML and never masked; the TF reference does not adapt its batch-norm variables at all.

Reproducible masks: the noise of episode ``i`` comes from a generator seeded by
(``mask_seed``, stage, epoch, i), queued at the start of each batch and consumed in task order by
``inner_rule`` (one call per adapted task), so a mask depends neither on the order of the episodes
nor on the number of processes. Validation/test use epoch 0: the same masks at every evaluation.
Calls outside a Lightning batch (notebooks, tests) draw from a generator seeded with ``mask_seed``.

Logged: ``mtnet/update_fraction/<layer>`` = P(M = 1) averaged over the layer's mask entries (the
fraction of units the inner loop updates, in expectation) and ``mtnet/sampled_fraction/<layer>`` (the
fraction in the masks actually drawn for the batch), plus ``tnet/transform_change/<layer>``
= ||T - I||_F / ||I||_F. The update fractions and T changes are also logged at the end of each
validation and test, so they are among the metrics trainer.validate/test return (and results.json).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from metaplus.algorithms.base import EpisodicLearner
from metaplus.data.episodes import TaskBatch, episode_generator
from metaplus.errors import ConfigError, check, check_choice, check_int, check_positive
from metaplus.inner.clone_adapt import UpdateRule
from metaplus.inner.learned_rates import parameter_key
from metaplus.nn.transform import insert_transforms, linear_maps, transform_parameter_names, transformed_layers

MASK_PER = ("task", "batch")


def logistic_noise(shape: torch.Size, generator: torch.Generator) -> Tensor:
    """g1 - g2 for two independent Gumbel(0, 1) draws: a Logistic(0, 1) sample, log u - log(1 - u)."""
    u = torch.rand(shape, generator=generator).clamp(1e-6, 1 - 1e-6)
    return torch.log(u) - torch.log1p(-u)


def straight_through_mask(logits: Tensor, noise: Tensor, temperature: float) -> Tensor:
    """Hard 0/1 mask in the forward pass, gradient of the relaxed mask in the backward pass.

    Two-class Gumbel-softmax over (zeta, 0): softmax((zeta + g1, g2) / tau)[0]
    = sigmoid((zeta + g1 - g2) / tau); its arg-max is 1 exactly when zeta + g1 - g2 > 0.
    """
    shifted = logits + noise.to(logits)
    soft = torch.sigmoid(shifted / temperature)
    hard = (shifted > 0).to(soft)
    return hard + soft - soft.detach()


class MTNet(EpisodicLearner):
    supports_batched_engine = False  # algo.engine=batched computes query losses after adaptation only

    def __init__(
        self,
        backbone: nn.Module,
        task_type: str,
        name: str = "mtnet",
        use_T: bool = True,
        use_M: bool = True,
        share_M: bool = True,
        mask_per: str = "task",
        temperature: float = 1.0,
        logit_init: float = 0.0,
        mask_seed: int = 0,
        **shared: Any,
    ):
        super().__init__(backbone, task_type, name=name, **shared)
        for key, value in dict(use_T=use_T, use_M=use_M, share_M=share_M).items():
            check(key, value, isinstance(value, bool), "true or false")
        check_choice("mask_per", mask_per, set(MASK_PER))
        check_positive("temperature", temperature)
        check(
            "logit_init",
            logit_init,
            isinstance(logit_init, (int, float)) and not isinstance(logit_init, bool),
            "a number",
        )
        check_int("mask_seed", mask_seed, 0)
        if not linear_maps(backbone):
            raise ConfigError(
                "use_T" if use_T else "use_M",
                f"{type(backbone).__name__} has no nn.Linear or nn.Conv2d layer to transform or mask",
            )
        self.use_T, self.use_M, self.share_M, self.mask_per = use_T, use_M, share_M, mask_per
        self.temperature, self.mask_seed = float(temperature), mask_seed
        if use_T:
            insert_transforms(backbone)  # before the optimizer exists: T are new parameters
        self.meta_only = transform_parameter_names(backbone)
        # Display name of each masked linear map -> its module path ("head" -> "head.layer" with T).
        self.mask_layers = {path.removesuffix(".layer") if use_T else path: path for path in linear_maps(backbone)}
        self.mask_logits = self.make_mask_logits(float(logit_init)) if use_M else None
        self.pending_noise: list[dict[str, Tensor]] = []
        self.sampled: list[dict[str, Tensor]] = []
        self.fallback_rng = torch.Generator().manual_seed(mask_seed)

    # -- construction ---------------------------------------------------------------------------
    def supports_checkpoint_ensemble(self) -> bool:
        return False  # masks come from noise queued by the batch hooks of Lightning's loops

    def make_mask_logits(self, init: float) -> nn.ParameterDict:
        """zeta: one logit per output unit of each W (share_M) or per weight/bias entry; also maps every
        masked parameter to its logits (``mask_of``) and to its layer (``layer_of``)."""
        self.mask_of: dict[str, str] = {}
        self.layer_of: dict[str, str] = {}
        logits = {}
        for layer, path in self.mask_layers.items():
            module = self.backbone.get_submodule(path)
            for pname, param in module.named_parameters(recurse=False):
                full = f"{path}.{pname}"
                key = parameter_key(layer if self.share_M else full)
                shape = param.shape[:1] if self.share_M else param.shape
                logits.setdefault(key, nn.Parameter(torch.full(shape, init, dtype=param.dtype, device=param.device)))
                self.mask_of[full], self.layer_of[key] = key, layer
        return nn.ParameterDict(logits)

    # -- the hooks T-nets and MT-nets override -------------------------------------------------
    def adapted_names(self) -> set[str]:
        return super().adapted_names() - self.meta_only  # T is meta-learned only

    def inner_rule(self) -> UpdateRule:
        """Masked SGD, one mask draw per call: ``adapt`` asks for the rule once per task."""
        if not self.use_M:
            return super().inner_rule()
        masks = self.sample_masks(self.next_noise())
        self.sampled.append({key: mask.detach().mean() for key, mask in masks.items()})
        lr, mask_of = self.inner_lr, self.mask_of

        def masked_sgd(name: str, param: Tensor, grad: Tensor, step: int) -> Tensor:
            key = mask_of.get(name)
            if key is None:  # not a linear map (e.g. batch norm): plain SGD as in MAML
                return -lr * grad
            mask = masks[key]
            if mask.dim() < param.dim():  # a unit mask masks whole rows of W
                mask = mask.reshape(-1, *([1] * (param.dim() - 1)))
            return -lr * mask * grad

        return masked_sgd

    # -- masks ----------------------------------------------------------------------------------
    def draw_noise(self, generator: torch.Generator) -> dict[str, Tensor]:
        return {key: logistic_noise(logits.shape, generator) for key, logits in self.mask_logits.items()}

    def sample_masks(self, noise: dict[str, Tensor]) -> dict[str, Tensor]:
        """Fresh straight-through masks from the current logits (a new graph per task, so each task's
        backward frees only its own graph even when the noise is shared by a meta-batch)."""
        return {
            key: straight_through_mask(logits, noise[key], self.temperature) for key, logits in self.mask_logits.items()
        }

    def next_noise(self) -> dict[str, Tensor]:
        if self.pending_noise:
            return self.pending_noise.pop(0)
        return self.noise_to_device([self.draw_noise(self.fallback_rng)])[0]

    def noise_to_device(self, draws: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """Noise is drawn on the CPU (seeded generators: the same masks on every device); move all of
        ``draws`` to the logits' device in ONE copy (pinned and non-blocking on CUDA), not one per
        tensor."""
        device = next(iter(self.mask_logits.values())).device
        tensors = [noise for draw in draws for noise in draw.values()]
        if device.type == "cpu" or not tensors:
            return draws
        flat = torch.cat([noise.flatten() for noise in tensors])
        if device.type == "cuda":
            flat = flat.pin_memory()
        pieces = iter(flat.to(device, non_blocking=True).split([noise.numel() for noise in tensors]))
        return [{key: next(pieces).view(noise.shape) for key, noise in draw.items()} for draw in draws]

    def queue_noise(self, batch: TaskBatch, stage: str, epoch: int, batch_idx: int) -> None:
        """The noise of every task of this batch, in task order, seeded per episode (or per batch)."""
        self.pending_noise, self.sampled = [], []
        if not self.use_M:
            return
        if self.mask_per == "batch":
            shared = self.draw_noise(episode_generator("mtnet-mask", self.mask_seed, stage, epoch, "batch", batch_idx))
            self.pending_noise = self.noise_to_device([shared]) * len(batch)
            return
        self.pending_noise = self.noise_to_device(
            [
                self.draw_noise(episode_generator("mtnet-mask", self.mask_seed, stage, epoch, i))
                for i in self.episode_indices(batch)
            ]
        )

    def on_train_batch_start(self, batch: TaskBatch, batch_idx: int) -> None:
        self.queue_noise(batch, "train", self.current_epoch, batch_idx)

    def on_validation_batch_start(self, batch: TaskBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.queue_noise(batch, "val", 0, batch_idx)

    def on_test_batch_start(self, batch: TaskBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.queue_noise(batch, "test", 0, batch_idx)

    # -- what a researcher wants to see --------------------------------------------------------
    # The figures below are 0-dim tensors on the learner's device, logged as they are: reading them
    # as floats every step would make the host wait for the device (results.json gets floats once
    # per evaluation, through what trainer.validate/test return).
    def update_fractions(self) -> dict[str, Tensor]:
        """P(M = 1) averaged over each layer's mask entries, and over all entries (``all``)."""
        if not self.use_M:
            return {}
        per_layer: dict[str, list[Tensor]] = {}
        for key, logits in self.mask_logits.items():
            per_layer.setdefault(self.layer_of[key], []).append(torch.sigmoid(logits.detach()).flatten())
        out = {f"mtnet/update_fraction/{layer}": torch.cat(p).mean() for layer, p in per_layer.items()}
        out["mtnet/update_fraction/all"] = torch.cat([torch.cat(p) for p in per_layer.values()]).mean()
        return out

    def sampled_fractions(self) -> dict[str, Tensor]:
        """Mean of the hard masks drawn since the batch started, per layer (weights and biases pooled)."""
        if not self.sampled:
            return {}
        per_layer: dict[str, list[Tensor]] = {}
        for masks in self.sampled:
            for key, fraction in masks.items():
                per_layer.setdefault(self.layer_of[key], []).append(fraction)
        return {f"mtnet/sampled_fraction/{layer}": torch.stack(v).mean() for layer, v in per_layer.items()}

    def transform_changes(self) -> dict[str, Tensor]:
        """||T - I||_F / ||I||_F per transformed layer: how far the outer loop moved each T."""
        out = {}
        for name, module in transformed_layers(self.backbone).items():
            t = module.transform.weight.detach()
            eye = torch.eye(t.shape[0], dtype=t.dtype, device=t.device)
            out[f"tnet/transform_change/{name}"] = (t - eye).norm() / eye.norm()
        return out

    def on_train_batch_end(self, outputs, batch: TaskBatch, batch_idx: int) -> None:
        for key, value in {**self.update_fractions(), **self.sampled_fractions()}.items():
            self.log(key, value, batch_size=len(batch))
        self.pending_noise, self.sampled = [], []

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        for key, value in self.transform_changes().items():
            self.log(key, value)

    def log_mask_summary(self) -> None:
        """The update fractions and T changes of the evaluated learner, logged at the end of an evaluation."""
        for key, value in {**self.update_fractions(), **self.transform_changes()}.items():
            self.log(key, value, sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        self.log_mask_summary()

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.log_mask_summary()
