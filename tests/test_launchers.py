"""Hydra's submitit launcher: local processes here; the SLURM config is composed and checked."""
import json
import os
import subprocess
import sys

from metaplus.testing import QUICK, REPO
from metaplus.compose import compose_config


def test_submitit_local_multirun_writes_one_results_json_per_job(tmp_path):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", "seed=1,2",
                           *QUICK, f"hydra.sweep.dir={tmp_path}", "hydra.launcher.timeout_min=10"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = sorted(tmp_path.glob("*/results.json"))
    assert [json.loads(p.read_text())["seed"] for p in results] == [1, 2]
    assert list(tmp_path.glob(".submitit/*/*_log.out")), "jobs ran through submitit"


def test_slurm_launcher_settings_follow_the_trainer_and_the_command_line():
    cfg = compose_config(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                          "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=90", "hydra.launcher.mem_gb=128"],
                         keep_hydra=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.mem_gb) == ("gpu", 90, 128)
    assert (launcher.nodes, launcher.gpus_per_node, launcher.tasks_per_node) == (2, 4, 4)
