"""Multi-process meta-training with Lightning DDP on CPU (gloo): two real processes per run."""

import json
import os
import subprocess
import sys

import pytest
import torch

from metaplus.testing import QUICK, REPO

DDP = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "logger=none",
    "trainer.log_every_n_steps=1",
]
TASKS = [
    "data.meta_batch_size=8",
    "data.batches_per_epoch=2",
    "data.val_episodes=6",
    "data.test_episodes=11",
    "algo.inner_steps=2",
]


def train(*overrides, timeout=400):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    proc = subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def reference_meta_gradient(make_config, indices):
    """The single-process meta-gradient over the same tasks (epoch 0, these indices)."""
    import lightning as L

    from metaplus.data.episodes import EpisodeDataset
    from metaplus.run import build

    cfg = make_config([*QUICK, *TASKS, "trainer.max_epochs=1"])
    L.seed_everything(cfg.seed)  # as run() does, so the initialisation matches
    parts = build(cfg)
    learner, dm = parts["learner"], parts["datamodule"]
    dataset = EpisodeDataset(dm.source("train"), 10**6, keys=(dm.seed, "train"))
    for i in indices:
        loss, _ = learner.task_loss(dataset[i][1])
        (loss / len(indices)).backward()
    return {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}


def test_two_process_meta_gradient_equals_single_process(make_config, tmp_path):
    probe = tmp_path / "probe"
    train(
        *DDP,
        *TASKS,
        "trainer.max_epochs=1",
        f"hydra.run.dir={tmp_path / 'run'}",
        "+callbacks.probe._target_=metaplus.testing.probes.FirstStepProbe",
        f"+callbacks.probe.path={probe}",
    )
    ranks = [torch.load(probe / f"rank{r}.pt") for r in (0, 1)]
    assert all(r["world_size"] == 2 for r in ranks)
    idx0, idx1 = ranks[0]["indices"], ranks[1]["indices"]
    assert len(idx0) == len(idx1) == 4, "each rank adapts meta_batch_size / world_size tasks"
    assert not set(idx0) & set(idx1), "ranks must receive different training tasks"

    expected = reference_meta_gradient(make_config, sorted(idx0 + idx1))
    for rank in ranks:
        assert rank["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(rank["grads"][name], grad, rtol=1e-4, atol=1e-6)

    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test/episodes"] == 11, "each fixed test episode is evaluated exactly once"
    assert results["val/episodes"] == 6
    assert (results["device"]["type"], results["device"]["processes"]) == ("cpu", 2), "the device actually used"


@pytest.mark.slow
def test_test_metric_over_all_episodes_equals_single_process(make_config, tmp_path):
    """The same checkpoint tested by 2 ranks and by 1 process gives the same mean over all episodes."""
    from metaplus.run import run

    train(*DDP, *TASKS, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'ddp'}")
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    single = run(make_config([*QUICK, *TASKS, "train=false", f"ckpt_path={tmp_path / 'ddp' / ddp['best_checkpoint']}"]))
    assert single["test/mse"] == pytest.approx(ddp["test/mse"], rel=1e-5)
    assert single["test/episodes"] == ddp["test/episodes"] == 11


@pytest.mark.slow
def test_checkpoint_ensemble_under_ddp_equals_single_process(make_config, tmp_path):
    """MAML++'s top-k ensemble split across 2 ranks counts each of the 11 episodes once and gives the
    single-process figure on the same checkpoints; meta-gradient clipping runs under DDP too."""
    from metaplus.run import run

    train(
        *DDP,
        *TASKS,
        "trainer.max_epochs=3",
        "ensemble_top_k=2",
        "algo.grad_clip_value=0.5",
        f"hydra.run.dir={tmp_path / 'ddp'}",
    )
    ddp = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert ddp["test/ensemble_episodes"] == 11 and len(ddp["test/ensemble_checkpoints"]) == 2
    single = run(
        make_config(
            [*QUICK, *TASKS, "ensemble_top_k=2", "train=false", f"ckpt_path={tmp_path / 'ddp' / 'checkpoints'}"]
        )
    )
    assert single["test/ensemble_checkpoints"] == ddp["test/ensemble_checkpoints"]
    assert single["test/mse_ensemble"] == pytest.approx(ddp["test/mse_ensemble"], rel=1e-5)


@pytest.mark.slow
def test_resume_from_a_ddp_checkpoint(tmp_path):
    first = tmp_path / "first"
    train(*DDP, *TASKS, "trainer.max_epochs=1", f"hydra.run.dir={first}")
    last = first / "checkpoints" / "last.ckpt"
    assert last.is_file()
    second = tmp_path / "second"
    train(*DDP, *TASKS, "trainer.max_epochs=2", f"ckpt_path={last}", f"hydra.run.dir={second}")
    results = json.loads((second / "results.json").read_text())
    assert results["epochs"] == 2 and results["global_step"] == 4, "resumed at epoch 1 and ran one more"


def test_meta_batch_must_divide_across_ranks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "train.py", *DDP, *TASKS, "data.meta_batch_size=5", f"hydra.run.dir={tmp_path}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "data.meta_batch_size: 5 is invalid: must be divisible by the number of processes (2" in proc.stderr
    assert not tmp_path.exists() or not any(tmp_path.glob("checkpoints")), "stopped before training"
