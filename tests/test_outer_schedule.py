"""The outer learning-rate schedule and meta-gradient clipping are capabilities of every learner."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from metaplus.algorithms.base import outer_lr_factor
from metaplus.config import ConfigError
from metaplus.run import build
from metaplus.testing import QUICK
from metaplus.testing.probes import FirstStepProbe


def test_outer_lr_factor_by_hand():
    # cosine from 1 to 0.1 over 4 steps: 1, 0.5*(1+cos(pi/4))*0.9+0.1, 0.55, ..., 0.1 and stays there
    assert outer_lr_factor(0, 4, "cosine", 0.1) == pytest.approx(1.0)
    assert outer_lr_factor(1, 4, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert outer_lr_factor(2, 4, "cosine", 0.1) == pytest.approx(0.55)
    assert outer_lr_factor(4, 4, "cosine", 0.1) == pytest.approx(0.1)
    assert outer_lr_factor(9, 4, "cosine", 0.1) == pytest.approx(0.1)
    assert outer_lr_factor(1, 4, "linear", 0.0) == pytest.approx(0.75)
    assert outer_lr_factor(3, 4, "constant", 0.0) == 1.0
    # warm-up over 3 steps: 1/4, 2/4, 3/4, then the schedule over the remaining 4 - 3 = 1 step
    assert [outer_lr_factor(t, 4, "linear", 0.0, warmup=3) for t in range(5)] == pytest.approx(
        [0.25, 0.5, 0.75, 1.0, 0.0]
    )


class RecordStepLR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


SCHEDULED = [
    "trainer.max_epochs=2",
    "data.batches_per_epoch=3",
    "data.meta_batch_size=2",
    "algo.lr_interval=step",
    "algo.lr_schedule=cosine",
]


@pytest.mark.parametrize(
    "algo, lr",
    [("maml", 0.004), ("anil", 0.004), ("metasgd", 0.004), ("mtnet", 0.004), ("pretrain", 0.004), ("reptile", 0.5)],
)
def test_every_learner_anneals_its_outer_lr_on_the_cosine(make_config, algo, lr):
    floor = lr / 8
    cfg = make_config([*QUICK, *SCHEDULED, f"algo={algo}", f"algo.meta_lr={lr}", f"algo.min_meta_lr={floor}"])
    parts = build(cfg)
    recorder = RecordStepLR()
    parts["trainer"].callbacks.append(recorder)
    parts["trainer"].fit(parts["learner"], datamodule=parts["datamodule"])
    total = 6
    expected = [floor + (lr - floor) * 0.5 * (1 + math.cos(math.pi * t / total)) for t in range(total)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-9)
    # the learning rate the last step used is logged
    assert float(parts["trainer"].callback_metrics["train/meta_lr"]) == pytest.approx(expected[-1], rel=1e-6)


def test_warmup_then_constant_per_epoch(make_config):
    cfg = make_config(
        [
            *QUICK,
            "trainer.max_epochs=4",
            "data.batches_per_epoch=1",
            "data.meta_batch_size=2",
            "algo=anil",
            "algo.meta_lr=0.002",
            "algo.warmup_steps=2",
        ]
    )
    parts = build(cfg)
    recorder = RecordStepLR()
    parts["trainer"].callbacks.append(recorder)
    parts["trainer"].fit(parts["learner"], datamodule=parts["datamodule"])
    assert recorder.lrs == pytest.approx([0.002 / 3, 0.002 * 2 / 3, 0.002, 0.002])


def test_maml_ca_switch_is_the_cosine_schedule(make_config):
    ca = build(make_config([*QUICK, "algo.ca=true"]))["learner"]
    named = build(make_config([*QUICK, "algo.lr_schedule=cosine"]))["learner"]
    assert ca.lr_schedule == named.lr_schedule == "cosine"


@pytest.mark.parametrize(
    "override, key",
    [
        ("algo.lr_schedule=step", "algo.lr_schedule"),
        ("algo.lr_interval=batch", "algo.lr_interval"),
        ("algo.grad_clip_value=-1", "algo.grad_clip_value"),
        ("algo.grad_clip_norm=0", "algo.grad_clip_norm"),
        ("algo.warmup_steps=-2", "algo.warmup_steps"),
        ("algo.min_meta_lr=1.0", "algo.min_meta_lr"),
    ],
)
def test_bad_schedule_values_name_their_key(make_config, override, key):
    with pytest.raises(ConfigError, match=key):
        build(make_config([*QUICK, "algo=anil", override]))


def first_step_gradients(make_config, tmp_path, *overrides):
    """The meta-gradient the optimizer applied in the first step (after any clipping)."""
    cfg = make_config(
        [
            *QUICK,
            "trainer.max_epochs=1",
            "data.batches_per_epoch=1",
            "data.meta_batch_size=4",
            "algo.inner_lr=0.1",
            *overrides,
        ]
    )
    L.seed_everything(cfg.seed)
    parts = build(cfg)
    parts["trainer"].callbacks.append(FirstStepProbe(str(tmp_path / "probe")))
    parts["trainer"].fit(parts["learner"], datamodule=parts["datamodule"])
    return torch.load(tmp_path / "probe" / "rank0.pt")["grads"]


def test_meta_gradient_clipping_by_value_and_by_norm(make_config, tmp_path):
    plain = first_step_gradients(make_config, tmp_path / "plain")
    biggest = max(g.abs().max().item() for g in plain.values())
    value = biggest / 4  # some elements must be clamped
    clamped = first_step_gradients(make_config, tmp_path / "value", f"algo.grad_clip_value={value}")
    for name, grad in plain.items():
        torch.testing.assert_close(clamped[name], grad.clamp(-value, value))
    norm = torch.sqrt(sum((g**2).sum() for g in plain.values())).item()
    limit = norm / 3
    rescaled = first_step_gradients(make_config, tmp_path / "norm", f"algo.grad_clip_norm={limit}")
    for name, grad in plain.items():
        torch.testing.assert_close(rescaled[name], grad * (limit / norm), rtol=1e-4, atol=1e-7)
