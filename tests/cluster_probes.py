"""Test-only callbacks for the cluster cases (run lock, DDP stop and preemption), injected through the
config (``+callbacks.x._target_=cluster_probes....``) so they also run in the DDP ranks' processes."""

from __future__ import annotations

import os
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class Gate(Callback):
    """After training step ``at_step`` writes ``<run dir>/at_gate`` and waits (at most ``timeout`` s)
    until the test creates ``<run dir>/open_gate``: the run is then known to be mid-training."""

    def __init__(self, at_step: int = 1, timeout: float = 180.0):
        self.at_step, self.timeout = at_step, timeout

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != self.at_step or not trainer.is_global_zero:
            return
        run_dir = Path(trainer.default_root_dir)
        (run_dir / "at_gate").write_text(str(os.getpid()))
        deadline = time.time() + self.timeout
        while not (run_dir / "open_gate").exists() and time.time() < deadline:
            time.sleep(0.05)


class DivergeOnRank(Callback):
    """Makes one DDP rank's training loss explode while staying finite: its query targets are
    multiplied by ``factor`` (the support set is untouched, so the inner loop stays sane)."""

    def __init__(self, rank: int = 1, factor: float = 1e4):
        self.rank, self.factor = rank, factor

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == self.rank:
            batch.query_y.mul_(self.factor)
