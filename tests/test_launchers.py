"""Hydra's submitit launcher: local processes here; the SLURM config is composed and checked."""

import json

from metaplus.compose import compose_config
from metaplus.testing import QUICK, commands


def test_submitit_local_multirun_writes_one_results_json_per_job(tmp_path):
    proc = commands.train(
        "-m",
        "hydra/launcher=submitit_local",
        "seed=1,2",
        *QUICK,
        "hydra.launcher.timeout_min=10",
        cwd=tmp_path,
        timeout=500,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = commands.only_directory(tmp_path / "outputs" / "multiruns")
    results = sorted(sweep.glob("*/results.json"))
    assert [json.loads(p.read_text())["seed"] for p in results] == [1, 2]
    assert list(sweep.glob(".submitit/*/*_log.out")), "jobs ran through submitit"


def test_slurm_launcher_settings_follow_the_trainer_and_the_command_line():
    cfg = compose_config(
        [
            "hydra/launcher=slurm",
            "trainer=ddp",
            "trainer.devices=4",
            "trainer.num_nodes=2",
            "hydra.launcher.partition=gpu",
            "hydra.launcher.timeout_min=90",
            "hydra.launcher.mem_gb=128",
        ],
        keep_hydra=True,
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.mem_gb) == ("gpu", 90, 128)
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
