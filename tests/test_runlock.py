"""One run directory, one running process (issue 24, cluster): a second process started in the
directory of a running one (a requeued job while the old one runs, the same command twice) stops at
once naming the directory and the holder, and the first goes on untouched; a dead holder does not
keep the directory locked."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from metaplus import runlock
from metaplus.runlock import LOCK_NAME, RunDirectoryBusy, RunLock
from metaplus.testing import REPO

SETTING = [
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "trainer.max_epochs=1",
    "data.batches_per_epoch=8",
    "data.meta_batch_size=2",
    "data.val_episodes=4",
    "data.test_episodes=4",
    "trainer.enable_progress_bar=false",
    "algo.inner_steps=1",
    "+callbacks.gate._target_=cluster_probes.Gate",
]


def environment() -> dict[str, str]:
    paths = [str(REPO / "tests"), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "1",
    }


def test_a_second_process_in_a_running_directory_refuses_and_the_first_goes_on(tmp_path):
    run_dir = tmp_path / "run"
    command = [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *SETTING]
    first = subprocess.Popen(
        command, cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 120
        while not (run_dir / "at_gate").exists():  # the first run is training (and waits at the gate)
            assert first.poll() is None and time.time() < deadline, "the first run did not start training"
            time.sleep(0.1)
        second = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=120)
        assert first.poll() is None, "the first run was still training when the second one ended"
        assert second.returncode != 0
        message = second.stderr + second.stdout
        assert (
            f"run directory {run_dir} is in use by another run: PID {first.pid} on host {socket.gethostname()}, "
            f"started " in message
        ), message[-3000:]
        assert "hydra.run.dir=" in message and "train.py" in message
        (run_dir / "open_gate").touch()
        printed, _ = first.communicate(timeout=240)
    finally:
        first.kill()
    assert first.returncode == 0, printed[-3000:]
    results = json.loads((run_dir / "results.json").read_text())
    assert results["global_step"] == 8, "the first run trained to its end"
    steps = [line.split(",") for line in (run_dir / "csv" / "metrics.csv").read_text().splitlines()]
    assert len({row[steps[0].index("step")] for row in steps[1:] if row[steps[0].index("train/loss")]}) == 8, (
        "its training log holds its own 8 steps"
    )
    assert not (run_dir / LOCK_NAME).exists(), "released at the end"


def test_a_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    """The kernel releases the lock of a process that ended however it ended (here: SIGKILL)."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from metaplus.runlock import RunLock; "
            f"RunLock({str(tmp_path)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        cwd=REPO,
        env=environment(),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryBusy, match=f"PID {holder.pid} on host"):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == holder.pid, "its description stays behind"
    with RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_NAME).exists()


def test_without_file_locking_the_holder_is_judged_by_host_and_pid(tmp_path, monkeypatch):
    def cannot_lock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(runlock.fcntl, "lockf", cannot_lock)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock_file = tmp_path / LOCK_NAME
    here = socket.gethostname()
    lock_file.write_text(json.dumps({"host": here, "pid": int(dead.stdout), "started": "then", "command": "x"}))
    with RunLock(tmp_path):  # this host, PID gone: stale
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    lock_file.write_text(json.dumps({"host": here, "pid": os.getppid(), "started": "then", "command": "x"}))
    with pytest.raises(RunDirectoryBusy, match=f"PID {os.getppid()} on host {here}"):
        RunLock(tmp_path).acquire()
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then", "command": "x"}))
    with pytest.raises(RunDirectoryBusy, match="cannot be checked from here: if that process no longer runs, delete"):
        RunLock(tmp_path).acquire()
