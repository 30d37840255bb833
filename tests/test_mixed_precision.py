"""Mixed precision made right (issue 24): meta-gradient clipping acts on the true (unscaled) gradient
under a loss-scaling precision, and ``16-mixed`` is refused before training (its inner loop would
differentiate an unscaled fp16 loss).

Lightning only runs ``16-mixed`` on the CPU when handed the plugin itself
(``Trainer(accelerator="cpu", precision="16-mixed")`` silently becomes bf16-mixed), so the clipping
test passes ``MixedPrecision("16-mixed", "cpu")``: a real GradScaler scales every
``manual_backward`` and unscales inside ``optimizer.step()``.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader

from metaplus.algorithms import MAML, base
from metaplus.data.episodes import TaskBatch
from metaplus.nn import MLP
from metaplus.testing import quiet_trainer

SCALE = 2.0**10


def sinusoid_batch(tasks: int = 2, shots: int = 10) -> TaskBatch:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(tasks, 2 * shots, 1, generator=g) * 10 - 5
    y = (torch.rand(tasks, 1, 1, generator=g) * 4 + 1) * torch.sin(x + 1)
    return TaskBatch(x[:, :shots], y[:, :shots], x[:, shots:], y[:, shots:], torch.arange(tasks))


def one_step_update(plugins=None, **clip) -> tuple[torch.Tensor, float | None]:
    """The parameter change of one meta-iteration with plain SGD (lr 1: the change is minus the
    clipped meta-gradient; Adam would hide an element-wise clip's scale), and the loss scale used."""
    torch.manual_seed(0)
    learner = MAML(
        MLP(input_shape=[1], output_dim=1, hidden=[40, 40]), "regression", inner_steps=1, inner_lr=0.01, **clip
    )
    learner.outer_optimizer = lambda: torch.optim.SGD(learner.parameters(), lr=1.0)
    before = torch.cat([p.detach().flatten().clone() for p in learner.parameters()])
    trainer = quiet_trainer(max_steps=1, callbacks=[], plugins=plugins)
    trainer.fit(learner, train_dataloaders=DataLoader([sinusoid_batch()], batch_size=None))
    after = torch.cat([p.detach().flatten() for p in learner.parameters()])
    scaler = getattr(trainer.precision_plugin, "scaler", None)
    return after - before, None if scaler is None else scaler.get_scale()


@pytest.mark.parametrize("kind", ["grad_clip_value", "grad_clip_norm"])
def test_16_mixed_clips_the_unscaled_meta_gradient(kind, monkeypatch):
    """Bug 1: clipping ran before the GradScaler unscaled the gradients, so with a loss scale of S
    a clip of v clipped the true gradient at v / S. Now the 16-mixed update equals the fp32 one."""
    monkeypatch.setattr(
        base, "refuse_fp16_inner_loop", lambda precision: None, raising=False
    )  # refused to users (bug 9); clipping must be right for any scaler
    unclipped, _ = one_step_update()
    # A clip that bites: half the elements (value) or half the norm (norm).
    limit = unclipped.abs().median().item() if kind == "grad_clip_value" else 0.5 * unclipped.norm().item()
    fp32, _ = one_step_update(**{kind: limit})
    assert not torch.allclose(fp32, unclipped, rtol=0.05), "the clip changes the update"
    # A scale of 1024: large enough that clipping the scaled gradient is far off, small enough that the
    # scaled backward stays finite in fp16 (at the default 65536 this model's first step overflows and
    # the scaler skips it, as it should).
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    fp16, scale = one_step_update(plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)], **{kind: limit})
    assert scale == SCALE, "the step was taken (a skipped step would halve the scale) under a real loss scale"
    # fp16 autocast rounds the forward and inner-loop passes (unit roundoff 2^-11): a few 1e-3 relative.
    error = ((fp16 - fp32).norm() / fp32.norm()).item()
    assert error < 0.02, f"16-mixed update differs from the fp32 clipped update by {error:.3g} (relative)"


@pytest.mark.parametrize("precision", ["16-mixed", "16"])
def test_16_mixed_is_refused_before_training_naming_what_to_use(precision, make_config, tmp_path):
    """Bug 9: fp16 in the inner loop is refused before anything trains or is written, with bf16 named
    and what V100/T4 users (no bf16) should use. (On the CPU Lightning used to swap in bf16 silently.)"""
    from metaplus.config import ConfigError
    from metaplus.run import run
    from metaplus.testing import QUICK

    out = tmp_path / "fp16"
    with pytest.raises(
        ConfigError,
        match=r"trainer\.precision: '?16(-mixed)?'? is not supported.*bf16-mixed.*"
        r"V100, T4\) use trainer\.precision=32-true",
    ):
        run(make_config([*QUICK, f"trainer.precision={precision}", "trainer.accelerator=cpu"], output_dir=out))
    assert not out.exists(), "nothing written"


def test_a_hand_built_16_mixed_trainer_is_refused_before_the_first_step(monkeypatch):
    """The learner refuses fp16 itself (setup), for a Trainer built outside metaplus.run."""
    from metaplus.config import ConfigError

    steps = []
    monkeypatch.setattr(MAML, "training_step", lambda self, batch, idx: steps.append(idx))
    with pytest.raises(ConfigError, match="trainer.precision: '16-mixed' is not supported"):
        one_step_update(plugins=[MixedPrecision("16-mixed", "cpu")])
    assert steps == []
