"""Restarts and preemption (issue 16): rerunning the same command in the same run directory resumes
from its ``last.ckpt`` (``resume: auto``), checkpoints are written atomically, and a SIGTERM'd run
leaves a checkpoint to resume from.

The kill tests run ``train.py`` in a subprocess with an explicit ``hydra.run.dir`` (the default run
directory is date-stamped, so "the same command" must name its directory) and a ``Pace`` callback
(metaplus/testing/probes.py) that makes the moment of the signal predictable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metaplus.callbacks.checkpoint_io import AtomicCheckpointIO
from metaplus.config import ConfigError
from metaplus.run import run
from metaplus.testing import QUICK, REPO, train_losses

STEPS = 6  # per epoch
SETTING = [
    "logger=csv",
    "trainer.log_every_n_steps=1",
    "trainer.max_epochs=3",
    f"data.batches_per_epoch={STEPS}",
    "data.meta_batch_size=4",
    "data.val_episodes=8",
    "data.test_episodes=8",
    "trainer.enable_progress_bar=false",
    "algo.inner_steps=2",
    "+callbacks.pace._target_=metaplus.testing.probes.Pace",
    "+callbacks.pace.seconds=0.3",
]


def command(run_dir: Path) -> list[str]:
    return [sys.executable, "train.py", f"hydra.run.dir={run_dir}", *SETTING]


def environment() -> dict[str, str]:
    paths = [str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
        "HYDRA_FULL_ERROR": "1",
    }


def finish(run_dir: Path) -> str:
    """Run to the end; return what it printed (Hydra's job logging goes to stdout)."""
    proc = subprocess.run(command(run_dir), cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def start_and_signal(run_dir: Path, sig: int, when) -> tuple[subprocess.Popen, str]:
    """Start the run, send ``sig`` once ``when(steps_done)`` holds, wait for the process to end;
    return it and what it printed."""
    printed = run_dir.parent / f"{run_dir.name}.out"
    with open(printed, "w") as out:
        proc = subprocess.Popen(command(run_dir), cwd=REPO, env=environment(), stdout=out, stderr=subprocess.STDOUT)
        wait_and_signal(proc, run_dir, sig, when)
    return proc, printed.read_text()


def wait_and_signal(proc: subprocess.Popen, run_dir: Path, sig: int, when) -> None:
    steps = run_dir / "steps.txt"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        try:
            done = int(steps.read_text() or -1)
        except (FileNotFoundError, ValueError):
            done = -1
        if when(done):
            proc.send_signal(sig)
            break
        time.sleep(0.05)
    proc.wait(timeout=120)


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_sigkilled_run_rerun_in_its_directory_equals_an_uninterrupted_run(tmp_path):
    uninterrupted, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    finish(uninterrupted)
    # SIGKILL in the middle of epoch 2: only the end-of-epoch-1 last.ckpt is on disk.
    proc, _ = start_and_signal(killed, signal.SIGKILL, lambda done: done >= STEPS + 2)
    assert proc.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "last.ckpt").is_file() and not (killed / "results.json").exists()
    rerun = finish(killed)  # the identical command
    assert "resume: auto: continuing from" in rerun
    full, resumed = results(uninterrupted), results(killed)
    for key in ("val/mse", "test/mse", "test/loss", "test/mse_ci95", "global_step", "epochs"):
        assert resumed[key] == full[key], key
    assert resumed["global_step"] == 3 * STEPS
    assert torch.load(killed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3 * STEPS
    assert not list((killed / "checkpoints").glob(".*.tmp")), "no half-written checkpoint remains"


@pytest.mark.slow
def test_sigtermed_run_leaves_a_checkpoint_it_resumes_from(tmp_path):
    run_dir = tmp_path / "terminated"
    # SIGTERM inside epoch 1, before any end-of-epoch checkpoint exists.
    proc, printed = start_and_signal(run_dir, signal.SIGTERM, lambda done: done >= 2)
    assert proc.returncode is not None and not (run_dir / "results.json").exists()
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 2 <= checkpoint["global_step"] < STEPS, "saved at the end of the step that was running"
    assert "SIGTERM: saved" in printed
    rerun = finish(run_dir)
    assert "resume: auto: continuing from" in rerun
    assert results(run_dir)["global_step"] == 3 * STEPS


def test_resume_never_starts_over_and_auto_continues(make_config, tmp_path):
    out = tmp_path / "same_dir"
    quick = [*QUICK, "logger=csv"]
    run(make_config([*quick, "trainer.max_epochs=1"], output_dir=out))
    run(make_config([*quick, "trainer.max_epochs=2"], output_dir=out))  # resume: auto (the default)
    assert sorted(train_losses(out)) == [3, 4, 5], "auto: epoch 2 only, continuing from last.ckpt"
    assert json.loads((out / "results.json").read_text())["global_step"] == 6
    run(make_config([*quick, "trainer.max_epochs=2", "resume=never"], output_dir=out))
    assert sorted(train_losses(out)) == [0, 1, 2, 3, 4, 5], "never: both epochs again from scratch"
    with pytest.raises(ConfigError, match="resume: 'sometimes' is invalid: must be one of \\['auto', 'never'\\]"):
        run(make_config([*quick, "resume=sometimes"], output_dir=tmp_path / "bad"))


def test_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)
    assert torch.load(path, weights_only=True) == {"step": 1}

    def interrupted_save(obj, handle):
        handle.write(b"half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped while writing

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}, "the previous checkpoint is intact"
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"], "no temporary file remains"


def test_a_damaged_last_checkpoint_names_the_file_and_the_way_out(make_config, tmp_path):
    """A truncated ``last.ckpt`` (a copy cut short) made ``resume: auto`` die deep in Lightning with
    an error that named neither the file nor what to do (issue 24, cluster)."""
    out = tmp_path / "damaged"
    quick = [*QUICK, "logger=csv"]
    run(make_config([*quick, "trainer.max_epochs=1"], output_dir=out))
    last = out / "checkpoints" / "last.ckpt"
    whole = last.read_bytes()
    last.write_bytes(whole[: len(whole) // 2])
    best = next(p for p in (out / "checkpoints").glob("best-*.ckpt"))
    with pytest.raises(
        ConfigError,
        match=f"resume: auto cannot continue from {last}: the file is damaged "
        f"\\(\\w+Error: .*\\)\\. Start over with resume=never, or continue from an "
        f"older checkpoint: ckpt_path={best}$",
    ):
        run(make_config([*quick, "trainer.max_epochs=2"], output_dir=out))
    assert last.read_bytes() == whole[: len(whole) // 2], "left as it was"
    run(make_config([*quick, "trainer.max_epochs=1", "resume=never"], output_dir=out))  # the way out works
