"""Every algorithm under Lightning DDP on CPU (gloo, two real processes), beyond MAML (tests/test_ddp.py).

For the deterministic learners, the meta-gradient the optimizer applies after DDP's all-reduce in the
first step equals the single-process meta-gradient over the same 8 tasks (the distributed sampler hands
rank 0 episodes 0, 2, 4, 6 and rank 1 episodes 1, 3, 5, 7; one process gets 0..7). MT-net counts as
deterministic: its masks are seeded per episode. Every DDP run also tests, and each fixed test episode
is evaluated exactly once.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from metaplus.testing import REPO, shared_data_dir

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]
COMMON = [
    "logger=none",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "trainer.max_epochs=1",
    "data.meta_batch_size=8",
    "data.batches_per_epoch=1",
    "data.val_episodes=4",
    "data.test_episodes=6",
]
OMNIGLOT = ["data=omniglot", "model=conv4", "model.filters=4", "data.ways=3", "data.queries=2"]
PROBE = "+callbacks.probe._target_=metaplus.testing.probes.FirstStepProbe"


def skip_without_data(name):
    if name in ON_OMNIGLOT and (shared_data_dir() is None or not (shared_data_dir() / "omniglot").is_dir()):
        pytest.skip("Omniglot not found under $METAPLUS_DATA or ../shared/data")


# name -> overrides; each algorithm with a small inner loop so a step is cheap.
SETTINGS = {
    "anil": ["algo=anil", "algo.inner_steps=2"],
    "metasgd": ["algo=metasgd", "algo.inner_steps=2"],
    "reptile": ["algo=reptile", "algo.inner_steps=3"],
    # MAML++ with LSLR, BNWB, BNRS and MSL on a per-step batch-norm Conv-4; batch statistics (bn_stats=batch)
    # keep it deterministic. da=false: second order, so every per-step BN weight gets a gradient.
    "mamlpp": ["algo=mamlpp", "algo.inner_steps=2", "algo.test_inner_steps=2", "algo.da=false", *OMNIGLOT],
    # First order (da) without MSL: step 1's BN weights and biases shape only detached inner gradients;
    # they are rows of one (steps, C) parameter with step 2's, so plain DDP still sees a gradient.
    "mamlpp_first_order": ["algo=mamlpp", "algo.inner_steps=2", "algo.test_inner_steps=2", "algo.msl=false", *OMNIGLOT],
    "mtnet": ["algo=mtnet", "algo.inner_steps=2"],
    "tnet": ["algo=tnet", "algo.inner_steps=2"],
    # Classification pre-training: the episode head gets no gradient.
    "pretrain": ["algo=pretrain", "algo.test_inner_steps=2", *OMNIGLOT],
    "pretrain_regression": ["algo=pretrain", "algo.test_inner_steps=2"],
}
ON_OMNIGLOT = {name for name, overrides in SETTINGS.items() if "data=omniglot" in overrides}


def train(*overrides, timeout=600):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "tests")}
    if shared_data_dir() is not None:
        env.setdefault("METAPLUS_DATA", str(shared_data_dir()))
    proc = subprocess.run(
        [sys.executable, "train.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def ddp_run(name, tmp_path):
    """Two-process training (first step probed) and test; returns the per-rank probes and results.json."""
    probe, out = tmp_path / "probe", tmp_path / "ddp"
    train(*DDP, *COMMON, *SETTINGS[name], f"hydra.run.dir={out}", PROBE, f"+callbacks.probe.path={probe}")
    ranks = [torch.load(probe / f"rank{r}.pt") for r in (0, 1)]
    return ranks, json.loads((out / "results.json").read_text())


def single_process_gradient(name, make_config, tmp_path):
    """The same first step in one process (in-process run, no test) over episodes 0..7."""
    from metaplus.run import run

    probe = tmp_path / "single_probe"
    run(
        make_config(
            [*COMMON, *SETTINGS[name], "test=false", PROBE, f"+callbacks.probe.path={probe}"],
            output_dir=tmp_path / "single",
        )
    )
    single = torch.load(probe / "rank0.pt")
    assert single["world_size"] == 1 and sorted(single["indices"]) == list(range(8))
    return single["grads"]


def assert_same_meta_gradient(name, make_config, tmp_path):
    ranks, results = ddp_run(name, tmp_path)
    assert all(r["world_size"] == 2 for r in ranks)
    assert sorted(ranks[0]["indices"] + ranks[1]["indices"]) == list(range(8)), "disjoint shares of 8 tasks"
    assert results["test/episodes"] == 6 and results["val/episodes"] == 4, "each fixed episode evaluated once"

    expected = single_process_gradient(name, make_config, tmp_path)
    for rank in ranks:
        assert rank["grads"].keys() == expected.keys(), "the same parameters received a gradient"
        for key, grad in expected.items():
            # atol 1e-5: a conv bias followed by BatchNorm has an exactly-zero true gradient (BN subtracts
            # the mean), so what is compared there is float noise of order 1e-6 that depends on the
            # summation order; a wrong DDP reduction (sum instead of mean, a missing rank) is off by ~50%.
            torch.testing.assert_close(
                rank["grads"][key], grad, rtol=1e-4, atol=1e-5, msg=lambda m, key=key: f"{key}: {m}"
            )


def test_anil_two_process_meta_gradient_equals_single_process(make_config, tmp_path):
    assert_same_meta_gradient("anil", make_config, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["metasgd", "reptile", "mamlpp", "mtnet", "pretrain"])
def test_two_process_meta_gradient_equals_single_process(name, make_config, tmp_path):
    skip_without_data(name)
    assert_same_meta_gradient(name, make_config, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tnet", "mamlpp_first_order", "pretrain_regression"])
def test_trains_and_tests_under_ddp(name, tmp_path):
    skip_without_data(name)
    ranks, results = ddp_run(name, tmp_path)
    assert results["global_step"] == 1 and results["epochs"] == 1
    assert results["test/episodes"] == 6
    for rank in ranks:  # the ranks applied the same, finite, all-reduced gradient
        for key, grad in rank["grads"].items():
            assert torch.isfinite(grad).all(), key
            torch.testing.assert_close(grad, ranks[0]["grads"][key])


# -- which learners get DDP's unused-parameter search (no processes needed) ----------------------------
def learner_for(make_config, overrides):
    from metaplus.config import instantiate_group
    from metaplus.nn.init_from import build_backbone

    cfg = make_config(overrides)
    datamodule = instantiate_group(cfg.data, "data")
    backbone = build_backbone(cfg.model)
    return instantiate_group(cfg.algo, "algo", backbone=backbone, task_type=datamodule.task)


@pytest.mark.parametrize(
    "name, searches",
    [
        ("anil", False),
        ("metasgd", False),
        ("reptile", False),
        ("mtnet", False),
        ("tnet", False),
        ("pretrain_regression", False),
        ("pretrain", True),
        ("mamlpp", False),
        ("mamlpp_first_order", False),
    ],
)
def test_ddp_searches_unused_parameters_only_where_a_learner_leaves_some(name, searches, make_config):
    from metaplus.run import ddp_overrides

    learner = learner_for(make_config, SETTINGS[name])
    expected = {"strategy": "ddp_find_unused_parameters_true"} if searches else {}
    assert ddp_overrides(OmegaConf.create({"strategy": "ddp"}), learner) == expected
    assert ddp_overrides(OmegaConf.create({"strategy": "auto"}), learner) == {}, "single device: untouched"
