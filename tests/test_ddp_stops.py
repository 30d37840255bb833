"""DDP runs that stop early stop on every rank, without hanging (issue 24, bugs 5 and 6): two real
processes on gloo, each run under a timeout that kills the whole process group (a hang is a
failure, not a stuck suite)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from metaplus.testing import REPO

DDP = [
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
    "logger=none",
    "trainer.log_every_n_steps=1",
    "data.meta_batch_size=4",
    "data.batches_per_epoch=8",
    "data.val_episodes=4",
    "data.test_episodes=4",
    "algo.inner_steps=1",
]
TIMEOUT = 150  # seconds; a healthy run of these takes well under a minute


def environment() -> dict[str, str]:
    paths = [str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "1",
    }


def start(run_dir: Path, *overrides: str) -> subprocess.Popen:
    """train.py (rank 0; Lightning starts rank 1 as its child) in a process group of its own."""
    out = open(run_dir.parent / f"{run_dir.name}.out", "w")
    return subprocess.Popen(
        [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *DDP, *overrides],
        cwd=REPO,
        env=environment(),
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, run_dir: Path, timeout: float = TIMEOUT) -> str:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as hung:
        os.killpg(proc.pid, signal.SIGKILL)  # both ranks
        proc.wait()
        raise AssertionError(
            f"the DDP run hung (killed after {timeout} s):\n"
            + (run_dir.parent / f"{run_dir.name}.out").read_text()[-3000:]
        ) from hung
    printed = (run_dir.parent / f"{run_dir.name}.out").read_text()
    assert proc.returncode == 0, printed[-3000:]
    return printed


def test_divergence_on_one_rank_stops_every_rank(tmp_path):
    """Bug 5: only rank 1's loss crosses the ceiling. Before, rank 1 alone set should_stop and left the
    loop while rank 0 waited in the next all-reduce for ever. Now the ranks decide together."""
    run_dir = tmp_path / "diverged"
    printed = finish(
        start(run_dir, "trainer.max_epochs=2", "+callbacks.diverge._target_=cluster_probes.DivergeOnRank"), run_dir
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 8, "stopped at the first check after the ceiling (end of epoch 1), not 16"
    assert any(
        w.startswith("divergence: train/loss above the ceiling 1e+06 for 3 consecutive steps on another DDP rank")
        and "training was stopped here" in w
        for w in results["warnings"]
    ), results["warnings"]
    assert results["test/episodes"] == 4, printed[-2000:]


def test_sigusr2_on_rank_0_only_saves_on_every_rank_and_does_not_hang(tmp_path):
    """Bug 6: SIGUSR2 (sbatch --signal, kill, submitit-local) reaches rank 0 only. Before, rank 0 alone
    went to save_checkpoint's barrier while rank 1 sat in the next all-reduce. Now the flag is shared
    every step: both ranks save at the end of the same step, then training goes on."""
    run_dir = tmp_path / "signalled"
    proc = start(run_dir, "trainer.max_epochs=1", "+callbacks.gate._target_=cluster_probes.Gate")
    deadline = time.time() + TIMEOUT
    while not (run_dir / "at_gate").exists():  # rank 0 is inside step 1 (rank 1 waits in step 2's all-reduce)
        assert proc.poll() is None and time.time() < deadline, "the run did not reach step 1"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGUSR2)  # rank 0 only
    (run_dir / "open_gate").touch()
    printed = finish(proc, run_dir)
    assert f"signal {int(signal.SIGUSR2)}: saved" in printed and "at epoch 0, step 2" in printed, printed[-3000:]
    assert json.loads((run_dir / "results.json").read_text())["global_step"] == 8, "training went on to its end"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 8, (
        "the end-of-epoch checkpoint replaced the signal's last.ckpt"
    )
    assert not list((run_dir / "checkpoints").glob("last-v*.ckpt"))
