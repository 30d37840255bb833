"""Exact resume (issue 3): 1 epoch + ``ckpt_path=last.ckpt`` for the 2nd epoch equals 2 epochs in one go.

The "interrupted" run is configured exactly like the uninterrupted one (same ``max_epochs``, so the
cosine schedule is the same) and stopped after the first epoch with ``trainer.max_steps``, as a
killed job would be. MSL, LSLR and CA are on so that epoch-dependent weights, extra meta-parameters
and the outer-lr scheduler all have to be restored.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from metaplus.callbacks.rng_state import collect_rng_states, restore_rng_states
from metaplus.compose import compose_config
from metaplus.run import run
from metaplus.testing import QUICK, train_losses

STEPS_PER_EPOCH = 3
SETTING = [
    *QUICK,
    "logger=csv",
    "trainer.max_epochs=2",
    f"data.batches_per_epoch={STEPS_PER_EPOCH}",
    "algo.inner_steps=2",
    "algo.msl=true",
    "algo.lslr=true",
    "algo.ca=true",
    "+callbacks.draws._target_=test_resume.GlobalRandomDraws",
]


class GlobalRandomDraws(Callback):
    """Stands in for dropout or Gumbel noise: draws from the global generators at every training
    step and records the draws by step in ``<output_dir>/draws.json``."""

    def __init__(self):
        self.draws: dict[int, list[float]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.draws[trainer.global_step] = [torch.rand(()).item(), float(np.random.rand()), random.random()]

    def on_train_end(self, trainer, pl_module):
        Path(trainer.default_root_dir, "draws.json").write_text(json.dumps(self.draws))


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def draws(run_dir: Path) -> dict[int, list[float]]:
    return {int(k): v for k, v in json.loads((run_dir / "draws.json").read_text()).items()}


def interrupted_then_resumed(tmp_path: Path, extra: list[str]) -> Path:
    first, second = tmp_path / "first", tmp_path / "resumed"
    run(compose_config([*SETTING, *extra, f"+trainer.max_steps={STEPS_PER_EPOCH}"], first))
    last = first / "checkpoints" / "last.ckpt"
    assert last.is_file()
    run(compose_config([*SETTING, *extra, f"ckpt_path={last}"], second))
    return second


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run(compose_config(SETTING, out))
    return out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Path:
    return interrupted_then_resumed(tmp_path_factory.mktemp("interrupted"), [])


def test_resume_continues_exactly(uninterrupted, resumed):
    full, after = train_losses(uninterrupted), train_losses(resumed)
    assert sorted(after) == list(range(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH)), "the resumed run trains epoch 2 only"
    for step in after:  # the next step after resume and every later one
        assert after[step] == full[step], f"train/loss differs at step {step}"
    reference, weights = final_weights(uninterrupted), final_weights(resumed)
    assert reference.keys() == weights.keys()
    for name in reference:
        assert torch.equal(reference[name], weights[name]), f"{name} differs after resume"
    results = json.loads((resumed / "results.json").read_text())
    assert (results["epochs"], results["global_step"]) == (2, 2 * STEPS_PER_EPOCH)


def test_resume_restores_the_global_random_generators(uninterrupted, resumed):
    full, after = draws(uninterrupted), draws(resumed)
    assert sorted(after) == list(range(STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH))
    assert all(after[step] == full[step] for step in after)


def test_without_the_rng_callback_the_global_draws_diverge(uninterrupted, tmp_path):
    """The callback is what makes the draws match: without it, the resumed run draws from the
    freshly seeded generators (this is what the previous test would catch)."""
    resumed = interrupted_then_resumed(tmp_path, ["~callbacks.rng_state"])
    full, after = draws(uninterrupted), draws(resumed)
    assert all(after[step] != full[step] for step in after)


def test_rng_states_survive_a_weights_only_checkpoint_round_trip(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    path = tmp_path / "states.pt"
    torch.save(collect_rng_states(), path)
    expected = [torch.rand(3), np.random.rand(3), random.random()]
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng_states(torch.load(path, weights_only=True))  # PyTorch's default for checkpoints
    got = [torch.rand(3), np.random.rand(3), random.random()]
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]
