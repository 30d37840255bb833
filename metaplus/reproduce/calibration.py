"""Calibration: seconds per meta-iteration and per validation episode of a row on this device, measured by
a short run of train.py per cost phase and kept in calibration.json."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import statistics
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

from metaplus.reproduce import locations, runner  # runner.run_train looked up at call time
from metaplus.reproduce.phases import epoch_phases
from metaplus.reproduce.planner import Timing
from metaplus.reproduce.registry import Row


class CalibrationTimer(Callback):
    """Per-iteration wall times (the first, a warm-up, dropped) and seconds per validation episode (batch
    times over the episodes they held: the loader's set-up is not counted), each also in CPU seconds of this
    process (what an unloaded core would take: on a shared machine the wall time grows with the load, the
    CPU time does not), written to ``out`` when fit ends. Injected as ``+callbacks.calibration``."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.started: tuple[float, float] | None = None  # (wall, CPU) at the training batch's start
        self.durations: list[float] = []
        self.cpu_durations: list[float] = []
        self.val_started: tuple[float, float] | None = None
        self.val_seconds = self.val_cpu_seconds = 0.0
        self.val_episodes = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.started = (time.perf_counter(), time.process_time())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.started is not None:
            self.durations.append(time.perf_counter() - self.started[0])
            self.cpu_durations.append(time.process_time() - self.started[1])
            self.started = None

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self.val_started = (time.perf_counter(), time.process_time())

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.val_started is not None:
            self.val_seconds += time.perf_counter() - self.val_started[0]
            self.val_cpu_seconds += time.process_time() - self.val_started[1]
            self.val_episodes += len(batch)
            self.val_started = None

    def on_fit_end(self, trainer, pl_module):
        timed, cpu = self.durations[1:] or self.durations, self.cpu_durations[1:] or self.cpu_durations
        episodes = max(self.val_episodes, 1)
        self.out.write_text(
            json.dumps(
                {
                    "s_per_iteration": statistics.fmean(timed),
                    "iteration_times": self.durations,
                    "cpu_s_per_iteration": statistics.fmean(cpu),
                    "s_per_val_episode": self.val_seconds / episodes,
                    "cpu_s_per_val_episode": self.val_cpu_seconds / episodes,
                    "val_episodes": self.val_episodes,
                }
            )
        )


CALIBRATION_ITERATIONS = {"sinusoid": 60, "polynomial": 60}
CALIBRATION_VAL_EPISODES = {"sinusoid": 100, "polynomial": 100}  # image data: 20


def device_key(trainer: str, threads: int) -> str:
    if trainer == "gpu":
        try:
            import torch

            name = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 - no CUDA here: the key still names the request
            name = "gpu"
        return f"gpu:{name}"
    return f"cpu:{os.cpu_count()}cores:{threads}threads"


def load_calibration(store: Path = locations.CALIBRATION) -> dict[str, Any]:
    return json.loads(store.read_text()) if store.is_file() else {}


def timing_of(measured: dict[str, Any], key: str) -> Timing:
    """The seconds a plan is made of. On a CPU, the CPU time of the calibrating process where it was
    recorded: the wall time of a calibration taken while other work shares the cores grows with that load
    (1.3-1.7x in calibration.json, taken at load averages 2.4-3.5 on 2 cores), and a plan made of it trained well under its budget
    (the MAML mini-ImageNet 60-min run: 33 min). max_time still ends a run whose budget the wall clock
    spends first. Older entries without CPU times, runs of several threads (their CPU seconds add up the
    threads': more than the wall time), and GPUs (asynchronous: their CPU time is not the iteration's) are
    planned on wall time."""
    if key.startswith("cpu:") and key.endswith(":1threads") and measured.get("cpu_s_per_iteration"):
        return Timing(measured["cpu_s_per_iteration"], measured["cpu_s_per_val_episode"], f"measured CPU time ({key})")
    return Timing(measured["s_per_iteration"], measured["s_per_val_episode"], f"measured ({key})")


def calibrate(
    row: Row, trainer: str, threads: int, *, force: bool = False, store: Path = locations.CALIBRATION
) -> Timing:
    """Seconds per meta-iteration and per validation episode of the row, measured once per device."""
    key = device_key(trainer, threads)
    cached = load_calibration(store).get(key, {}).get(row.name)
    if cached and not force:
        return timing_of(cached, key)
    iterations = CALIBRATION_ITERATIONS.get(row.data, 6)
    val_episodes = CALIBRATION_VAL_EPISODES.get(row.data, 20)
    work = store.parent / "_calibration" / f"{row.name}-{os.getpid()}"
    measured_phases = []
    for phase in epoch_phases(row):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        out = work / "timing.json"
        overrides = [
            *row.overrides,
            *phase.overrides,
            f"data.batches_per_epoch={iterations}",
            "trainer.max_epochs=1",
            f"data.val_episodes={val_episodes}",
            "test=false",
            "logger=none",
            "trainer.enable_progress_bar=false",
            "~callbacks.progress_bar",
            "~callbacks.model_checkpoint",
            "+trainer.enable_checkpointing=false",
            "+callbacks.calibration._target_=metaplus.reproduce.calibration.CalibrationTimer",
            f"+callbacks.calibration.out={out}",
            f"trainer={trainer}",
            f"hydra.run.dir={work}",
        ]
        runner.run_train(overrides, threads, work / "stdout.log")
        measured_phases.append({"epochs": phase.epochs, "phase": phase.label, **json.loads(out.read_text())})
    # The plan spreads one iteration count over every epoch: its cost is the epoch-weighted mean of the
    # phases' (MAML++ mini-ImageNet: ~12 s per iteration under MSL's 15 epochs, ~2.7 s after; planned on
    # the first alone, its 60-min run trained 14 min).
    epochs = sum(m["epochs"] for m in measured_phases)
    measured = {
        name: sum(m["epochs"] * m[name] for m in measured_phases) / epochs
        for name in ("s_per_iteration", "cpu_s_per_iteration")
    }
    measured.update({name: measured_phases[0][name] for name in ("s_per_val_episode", "cpu_s_per_val_episode")})
    timing = timing_of(measured, key)
    entry = {
        "s_per_iteration": measured["s_per_iteration"],
        "s_per_val_episode": measured["s_per_val_episode"],
        "cpu_s_per_iteration": measured["cpu_s_per_iteration"],
        "cpu_s_per_val_episode": measured["cpu_s_per_val_episode"],
        "iterations": iterations,
        "val_episodes": val_episodes,
        "load_average": os.getloadavg()[0],
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    if len(measured_phases) > 1:
        entry["phases"] = [
            {name: m[name] for name in ("phase", "epochs", "s_per_iteration", "cpu_s_per_iteration")}
            for m in measured_phases
        ]
    store.parent.mkdir(parents=True, exist_ok=True)
    with (store.parent / ".calibration.lock").open("w") as lock:  # several invocations may share it
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = load_calibration(store)
        kept.setdefault(key, {})[row.name] = entry
        store.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return timing
