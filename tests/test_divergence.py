"""Runs that went wrong say so (issue 16): a loss ceiling and chance-level accuracy, as a callback.

``algo.inner_lr=1e6`` trains at an enormous but finite loss; before, such a run exited 0 with
``test/acc 0.200 ± 0.000`` and no word. Now training stops at the ceiling, results.json lists the
warnings and the printed summary repeats them; a healthy run has none.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from metaplus.callbacks.divergence import Divergence, DivergenceError
from metaplus.config import ConfigError
from metaplus.run import run
from metaplus.testing import OMNIGLOT, QUICK, needs_omniglot
from metaplus.testing.zoo import pattern_folder

TINY = [
    *QUICK,
    "model=conv4",
    "model.filters=8",
    "data.batches_per_epoch=6",
    "data.meta_batch_size=2",
    "algo.test_inner_steps=1",
    "callbacks.divergence.check_every_n_steps=3",
]


def check_diverged(out, capsys, ways: int) -> dict:
    results = json.loads((out / "results.json").read_text())
    ceiling = 10 * math.log(ways)
    assert any(
        w.startswith("divergence: train/loss")
        and f"above the ceiling {ceiling:.4g}" in w
        and "training was stopped here" in w
        for w in results["warnings"]
    ), results["warnings"]
    assert results["global_step"] == 3, "stopped after patience=3 steps above the ceiling, not after 6"
    assert any(
        w.startswith("chance level: test/acc") and f"1/{ways} = {1 / ways:.4f}" in w for w in results["warnings"]
    ), results["warnings"]
    printed = capsys.readouterr().out
    assert "WARNING: divergence: train/loss" in printed and "WARNING: chance level: test/acc" in printed
    return results


@needs_omniglot
def test_huge_inner_lr_on_omniglot_is_reported(tmp_path, capsys, cache_dir):  # noqa: F811
    out = tmp_path / "omniglot"
    with pytest.warns(UserWarning, match="divergence: train/loss"):
        run_config = [
            *TINY,
            "data=omniglot",
            f"data.root={OMNIGLOT}",
            f"data.cache_dir={cache_dir}",
            "algo.inner_lr=1e6",
            "data.val_episodes=4",
            "data.test_episodes=4",
        ]
        from metaplus.compose import compose_config

        run(compose_config(run_config, out))
    check_diverged(out, capsys, ways=5)


def test_huge_inner_lr_on_an_image_folder_is_reported_and_a_healthy_run_is_not(tmp_path, capsys):
    from metaplus.compose import compose_config

    root = pattern_folder(tmp_path / "images")
    folder = [
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=16",
        "data.source.channels=1",
        "data.shots=1",
        "data.queries=2",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    out = tmp_path / "diverged"
    with pytest.warns(UserWarning, match="divergence: train/loss"):
        run(compose_config([*TINY, *folder, "algo.inner_lr=1e6"], out))
    results = check_diverged(out, capsys, ways=5)
    # the image folder's classes are recorded per split, as the hash of their names assigns them
    assert sorted(sum(results["data_classes"].values(), [])) == [f"class{c:02d}" for c in range(40)]
    healthy = tmp_path / "healthy"
    # healthy: 1-shot fine-tuning of even a barely trained Conv-4 separates these classes
    run(
        compose_config(
            [*TINY, *folder, "algo.inner_lr=0.4", "algo.test_inner_steps=5", "data.test_episodes=20"], healthy
        )
    )
    assert json.loads((healthy / "results.json").read_text())["warnings"] == []
    assert "WARNING" not in capsys.readouterr().out


def test_chance_level_validation_is_warned_after_enough_steps(tmp_path, capsys):
    """A learner that cannot learn (meta_lr tiny, no inner steps) stays at chance on validation."""
    from metaplus.compose import compose_config

    root = pattern_folder(tmp_path / "images")
    folder = [
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=16",
        "data.source.channels=1",
        "data.shots=1",
        "data.queries=2",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    base = [
        *TINY,
        *folder,
        "algo.inner_steps=0",
        "algo.test_inner_steps=0",
        "algo.meta_lr=1e-12",
        "algo.min_meta_lr=1e-12",
        "data.val_episodes=40",
        "data.test_episodes=40",
    ]
    run(compose_config([*base, "callbacks.divergence.chance_after_steps=6"], tmp_path / "late"))
    warnings = json.loads((tmp_path / "late" / "results.json").read_text())["warnings"]
    assert any(w.startswith("chance level: val/acc") and "after 6 training steps" in w for w in warnings), warnings
    run(compose_config([*base, "callbacks.divergence.chance_after_steps=7"], tmp_path / "early"))
    warnings = json.loads((tmp_path / "early" / "results.json").read_text())["warnings"]
    assert not any(w.startswith("chance level: val/acc") for w in warnings), "too few steps to judge"


def test_an_accuracy_of_exactly_chance_with_zero_spread_is_at_chance():
    """float32 episode accuracies of 1/5 average to 0.20000000298, CI 0: still chance level."""
    logged = {"test/acc": torch.tensor(0.2).double(), "test/acc_ci95": torch.tensor(0.0, dtype=torch.float64)}
    assert Divergence().at_chance(logged, "test", 5).startswith("chance level: test/acc 0.2000 ± 0.0000")
    logged["test/acc"] = torch.tensor(0.2001, dtype=torch.float64)
    assert Divergence().at_chance(logged, "test", 5) is None


def test_loss_ceiling_modes_and_bad_values(make_config, tmp_path):
    with pytest.raises(DivergenceError, match="above the ceiling 0.001"):
        run(
            make_config(
                [*QUICK, "callbacks.divergence.max_loss=0.001", "callbacks.divergence.on_loss_ceiling=error"],
                output_dir=tmp_path / "err",
            )
        )
    run(
        make_config(
            [
                *QUICK,
                "callbacks.divergence.max_loss=0.001",
                "callbacks.divergence.patience=1",
                "callbacks.divergence.on_loss_ceiling=warn",
                "callbacks.divergence.check_every_n_steps=1",
            ],
            output_dir=tmp_path / "warn",
        )
    )
    results = json.loads((tmp_path / "warn" / "results.json").read_text())
    assert results["global_step"] == 3 and len(results["warnings"]) == 3, "warn: every step is reported, none stops"
    with pytest.raises(ConfigError, match="max_loss"):
        Divergence(max_loss=-1)
    with pytest.raises(ConfigError, match="on_loss_ceiling"):
        Divergence(on_loss_ceiling="ignore")


def test_the_loss_ceiling_is_read_back_only_every_n_steps():
    """The ceiling is tracked on the loss's device: no device->host read per step (issue 24, bug 5).
    A loss on the ``meta`` device cannot be read back at all, so the read is exactly where it fails."""
    from types import SimpleNamespace

    class Strategy:
        def reduce_boolean_decision(self, decision, all=True):
            return decision

    trainer = SimpleNamespace(callback_metrics={"train/loss": torch.tensor(5.0, device="meta")}, strategy=Strategy())
    divergence = Divergence(max_loss=1.0, patience=3, check_every_n_steps=10)
    for _ in range(9):
        divergence.on_train_batch_end(trainer, None, None, None, 0)
    with pytest.raises((RuntimeError, NotImplementedError)):  # the 10th step reads the flag back
        divergence.on_train_batch_end(trainer, None, None, None, 0)
