"""``model.init_from=<checkpoint>``: start any learner's backbone from the backbone of another run.

The recipe of "pre-train, then meta-learn" (Chen et al. 2019; UNICORN-MAML): train ``algo=pretrain``,
then ``algo=maml model.init_from=<its .ckpt>``. The checkpoint may be a Lightning checkpoint of any
metaplus learner (its ``backbone.*`` tensors are used; the pre-training head, MT-net logits, LSLR
rates and optimizer state are not) or a plain ``state_dict`` of a backbone.

The rule, applied to the freshly built backbone before the learner wraps it:
- every parameter and buffer of the body (everything outside ``head``) must be in the checkpoint
  with the same shape; anything else is an error listing each tensor with both shapes (or "missing"),
  since a body that does not match is a different architecture or width;
- the head is loaded when its shapes match; when they differ (e.g. a 20-way checkpoint into a 5-way
  learner) or the checkpoint has no head, the fresh head is kept and one log line says so;
- checkpoint tensors the backbone does not have (MAML++'s per-step running statistics, a T-net's
  transformations) are skipped and listed in one log line.
Loading happens before the learner configures per-step batch norm, so a MAML++ learner starts
every step's BN set from the checkpoint's single set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from metaplus.config import instantiate_group
from metaplus.errors import ConfigError

log = logging.getLogger("metaplus")
KEY = "init_from"


def split_init_from(node: DictConfig) -> tuple[DictConfig, str | None]:
    """The model node without ``init_from`` (what the backbone's constructor takes), and its value."""
    if not isinstance(node, DictConfig) or KEY not in node:
        return node, None
    # Resolved here, while the node still sits in the whole config (${data.input_shape}, ...).
    resolved = OmegaConf.to_container(node, resolve=True)
    value = resolved.pop(KEY)
    return OmegaConf.create(resolved), (None if value is None else str(value))


def build_backbone(model_cfg: DictConfig, initialise: bool = True) -> nn.Module:
    """The backbone of ``model_cfg``, started from ``model.init_from`` when ``initialise`` (a new run)
    and left fresh otherwise (loading a trained run, whose checkpoint holds the weights)."""
    node, init_from = split_init_from(model_cfg)
    backbone = instantiate_group(node, "model")
    if initialise and init_from is not None:  # before the learner reshapes per-step BN or inserts T-net layers
        init_backbone_from(backbone, init_from)
    return backbone


def read_backbone_state(path: str | Path) -> dict[str, Tensor]:
    """The backbone tensors of a metaplus Lightning checkpoint, or a plain state_dict as it is."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"model.{KEY}",
            f"{str(path)!r} is invalid: must be an existing checkpoint file "
            f"(a .ckpt of another run, e.g. outputs/<run>/checkpoints/best.ckpt)",
        )
    try:  # tensors and plain containers only: a checkpoint cannot run code while it is read
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ConfigError(f"model.{KEY}", f"cannot read {path} as a checkpoint: {err}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = {k.removeprefix("backbone."): v for k, v in state["state_dict"].items() if k.startswith("backbone.")}
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(
            f"model.{KEY}",
            f"{path} holds no backbone tensors (expected a Lightning checkpoint "
            f"with 'backbone.*' entries or a backbone state_dict)",
        )
    return state


def is_head(name: str) -> bool:
    return name == "head" or name.startswith("head.")


def init_backbone_from(backbone: nn.Module, path: str | Path) -> dict[str, Any]:
    """Copy the checkpoint's tensors into ``backbone`` by the rule above; return what was done."""
    source = read_backbone_state(path)
    target = backbone.state_dict()
    problems, head_kept = [], []
    for name, tensor in target.items():
        found = source.get(name)
        same = found is not None and found.shape == tensor.shape
        if is_head(name):
            if not same:
                head_kept.append(
                    f"{name} {tuple(tensor.shape)} vs {'missing' if found is None else tuple(found.shape)}"
                )
        elif not same:
            problems.append(
                f"{name}: backbone {tuple(tensor.shape)}, checkpoint "
                f"{'missing' if found is None else tuple(found.shape)}"
            )
    if problems:
        raise ConfigError(
            f"model.{KEY}",
            f"the backbone of {path} does not match this model ({len(problems)} tensors): " + "; ".join(problems),
        )
    # A head that differs in any tensor stays fresh as a whole (no loaded bias beside a fresh weight).
    loaded = {n: source[n] for n in target if not (head_kept and is_head(n)) and n in source}
    with torch.no_grad():
        for name, tensor in loaded.items():
            target[name].copy_(tensor)
    skipped = sorted(set(source) - set(target))
    if head_kept:
        log.info("model.init_from: head shapes differ, keeping the freshly initialised head (%s)", "; ".join(head_kept))
    if skipped:
        log.info(
            "model.init_from: %d checkpoint tensors this backbone does not have were skipped: %s",
            len(skipped),
            ", ".join(skipped),
        )
    log.info("model.init_from: %d tensors loaded from %s", len(loaded), path)
    return dict(loaded=sorted(loaded), head_kept=bool(head_kept), skipped=skipped)
