"""Reproduction of the papers' rows (issue 12): one registry of rows, runs through train.py's presets,
one JSON and one markdown table, regenerable by one command.

    python bench/reproduce.py --rows quick                     # 2 tiny rows end to end, a few minutes,
                                                               # in outputs/reproduction-quick/ (its own table)
    python bench/reproduce.py --rows cpu --budget-min 30 --jobs 2    # every row, 30 min of training each
    python bench/reproduce.py --rows maml_omniglot_5w1s,mamlpp_omniglot_5w1s --budget-min 60 --seeds 1
    python bench/reproduce.py --rows time                      # time-to-accuracy runs (MAML mini-ImageNet, 60 min)
    python bench/reproduce.py --rows cpu --paper-budget         # the papers' full budgets (GPU: trainer=gpu)
    python bench/reproduce.py --rows cpu --paper-budget --estimate-only    # only the cost estimates
    python bench/reproduce.py --report-only                     # re-render from the run directories

Every run is ``python train.py algo=A data=D data.ways=W data.shots=S seed=K`` (the pair's preset
composes the published setting; nothing published is re-specified here) plus the budget overrides:

* Budget scaling (``--budget-min`` minutes of training per run): a short calibration run measures
  the seconds per meta-iteration and per validation episode of the row on this machine with this
  many threads, measured again by every invocation (the load of a shared machine moves; the latest
  measurement is kept in bench/results/reproduction/calibration.json). On a CPU the plan uses the
  calibration's CPU seconds, which the load of other jobs does not inflate (see ``timing_of``). Where the
  cost of an iteration changes over the epochs (MSL's query loss after every step, DA's first-order
  epochs), each phase is calibrated and the plan uses their mean weighted by epochs (``epoch_phases``). The preset's number of
  epochs is kept, because MSL, cosine annealing and derivative-order annealing are scheduled in
  epochs, and ``data.batches_per_epoch`` shrinks so that epochs x batches (plus validations) fit 90 %
  of the budget; ``+trainer.max_time`` = the budget is the safety net. When the budget holds less
  than one meta-iteration per epoch, the run trains that many epochs of one iteration
  (``trainer.max_epochs`` lowered, the epoch-valued schedules cut, ``schedule_complete: false``).
  A preset with nothing scheduled over its epochs (MAML, FOMAML, ANIL: a constant meta learning rate)
  rounds the iterations per epoch up and trains fewer epochs instead of rounding down and losing
  up to an epoch's worth of iterations per epoch (``fewer_fuller_epochs``).
* Validation: ``data.val_episodes=100`` fixed episodes (the CI of 100 episodes is ~2 points, enough to
  pick a checkpoint), every d epochs with d the smallest divisor of the epochs giving <= 20 validations
  (so the last epoch is validated, and MAML++'s top-5 ensemble has checkpoints to choose from);
  fewer validations when 20 of them would take more than 15 % of the budget, and fewer episodes (down
  to 20) when not even 5 validations of 100 would fit (mini-ImageNet on a CPU). Test: always
  ``data.test_episodes=600`` fixed episodes (the papers' protocol).
* Resumable: run (row, seed) lives in bench/results/reproduction/<row>/seed<k>/ (``hydra.run.dir``); a
  seed with results.json (or its summary) is skipped; one with checkpoints/last.ckpt and no results
  resumes with ``ckpt_path=`` and the overrides recorded at its first launch (plan.json).

``--paper-budget`` drops the scaling (the presets' own epochs x iterations, validation every epoch) and
prints first one cost line per row: meta-iterations x s/iteration, measured by the calibration on this
device (or, with ``--no-calibrate``, the cached measurement of another device, labelled as such).
Outputs: bench/results/reproduction.json, docs/reproduction.md and the accuracy-against-training-time
curves bench/results/reproduction/curves.png (from ``time/train_s`` of metaplus.callbacks.WallClock).
``--out DIR`` keeps runs, calibrations and a table of just the rows asked for in DIR instead
(reproduction.json, reproduction.md, curves.png); the quick group does so by default, in
outputs/reproduction-quick/, so that it trains on every fresh call and never touches the committed runs.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/reproduce.py` puts bench/ first, not the repository
    sys.path.insert(0, str(REPO))

from bench.learners import IterationTimer  # noqa: E402  (shared helpers of the other benches)
from bench.omniglot_budget import val_curve  # noqa: E402

RESULTS = REPO / "bench" / "results"
RUNS = RESULTS / "reproduction"
JSON_OUT = RESULTS / "reproduction.json"
DOC_OUT = REPO / "docs" / "reproduction.md"
CALIBRATION = RUNS / "calibration.json"
# The quick group proves the pipeline end to end on every call: its 2-minute runs, table and calibrations
# live apart from the committed reproduction (which they would otherwise skip as done, or overwrite).
QUICK_RUNS = REPO / "outputs" / "reproduction-quick"

VAL_EPISODES = 100          # per validation during a budgeted run (image and regression data alike)
MAX_VALIDATIONS = 20
MIN_VALIDATIONS = 5         # fewer validation episodes (not below MIN_VAL_EPISODES) rather than fewer than this
MIN_VAL_EPISODES = 20
VAL_SHARE = 0.15            # at most this share of the budget goes to validation
PLAN_SHARE = 0.9            # iterations are planned for this share of the budget; max_time = the budget
TEST_EPISODES = 600
QUICK_BUDGET_MIN = 2.0
DEFAULT_BUDGET_MIN = 30.0


# -- the registry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One published number: the (algo, data, ways, shots) run through its preset, and the paper's value.

    Accuracies are fractions (as in results.json), MSEs raw. ``paper_ci`` is None where the paper gives
    none. ``paper_iterations`` is the paper's number of meta-iterations (epochs x iterations per epoch).
    """

    name: str
    algo: str
    data: str
    ways: int | None
    shots: int
    metric: str                      # "acc" or "mse"
    paper: float | None
    paper_ci: float | None
    paper_iterations: int
    preset: str                      # the preset (and row) the composition must name
    source: str                      # where the paper number is written down
    seeds: int = 1
    ensemble: bool = False           # the protocol reports the top-k checkpoint ensemble (MAML++)
    # Inner steps at test behind the paper's figure when they differ from the preset's test_inner_steps
    # (the Meta-SGD paper's sinusoid table adapts in one step): that step of the test curve is compared.
    paper_test_steps: int | None = None
    note: str = ""
    recorded: str | None = None      # a row taken from an existing benchmark instead of run here
    # A time-to-accuracy run (TIME_ROWS): the table row it measures, always trained for budget_min minutes.
    time_of: str | None = None
    budget_min: float | None = None

    @property
    def overrides(self) -> list[str]:
        pair = [f"algo={self.algo}", f"data={self.data}"]
        if self.ways is not None:
            pair.append(f"data.ways={self.ways}")
        return [*pair, f"data.shots={self.shots}"]

    @property
    def label(self) -> str:
        return f"{self.ways}w{self.shots}s" if self.ways else f"{self.shots}-shot"


REF4 = "REFERENCE.md §4"
ONE_STEP = ("compared after 1 inner step at test, as the Meta-SGD paper's table adapts (the preset also "
            "reports 10 steps, MAML's figure: in brackets)")
MTNET_POLY_COMMAND = ("for o in 0 1 2; do OMP_NUM_THREADS=1 python train.py experiment=mtnet_polynomial "
                      "data.source.order=$o logger=csv hydra.run.dir=outputs/bench/mtnet_polynomial_60k/order$o & "
                      "done; wait; python bench/mask_fractions.py outputs/bench/mtnet_polynomial_60k/order* "
                      "--out bench/results/mtnet_polynomial_60k")

ROWS: dict[str, Row] = {row.name: row for row in [
    Row("maml_omniglot_5w1s", "maml", "omniglot", 5, 1, "acc", 0.987, 0.004, 60_000, "maml_omniglot", REF4, seeds=3),
    Row("maml_omniglot_20w1s", "maml", "omniglot", 20, 1, "acc", 0.958, 0.003, 60_000, "maml_omniglot", REF4,
        seeds=3),
    Row("mamlpp_omniglot_5w1s", "mamlpp", "omniglot", 5, 1, "acc", 0.9947, None, 50_000, "mamlpp_omniglot", REF4,
        seeds=3, ensemble=True),
    Row("mamlpp_omniglot_20w1s", "mamlpp", "omniglot", 20, 1, "acc", 0.9765, None, 50_000, "mamlpp_omniglot", REF4,
        seeds=3, ensemble=True),
    Row("reptile_omniglot_5w1s", "reptile", "omniglot", 5, 1, "acc", 0.9768, None, 100_000, "reptile_omniglot",
        "REFERENCE.md §7 (transductive few-shot setting)",
        note="the paper's transductive row (batch statistics of the query set, as our Conv-4 evaluates); "
             "its non-transductive §4 value is 95.39 ± 0.09"),
    Row("anil_omniglot_20w1s", "anil", "omniglot", 20, 1, "acc", 0.962, 0.005, 60_000, "anil_omniglot", REF4),
    Row("maml_miniimagenet_5w1s", "maml", "miniimagenet", 5, 1, "acc", 0.4870, 0.0184, 60_000,
        "maml_miniimagenet", REF4),
    Row("fomaml_miniimagenet_5w1s", "fomaml", "miniimagenet", 5, 1, "acc", 0.4807, 0.0175, 60_000,
        "fomaml_miniimagenet", REF4),
    Row("mamlpp_miniimagenet_5w1s", "mamlpp", "miniimagenet", 5, 1, "acc", 0.5215, 0.0026, 50_000,
        "mamlpp_miniimagenet", REF4, ensemble=True),
    Row("maml_sinusoid_5shot", "maml", "sinusoid", None, 5, "mse", 1.13, 0.18, 70_000, "maml_sinusoid",
        "REFERENCE.md §4 note (Meta-SGD paper's table)", paper_test_steps=1, note=ONE_STEP),
    Row("maml_sinusoid_10shot", "maml", "sinusoid", None, 10, "mse", None, None, 70_000, "maml_sinusoid",
        "no 10-shot value in REFERENCE.md", paper_test_steps=1,
        note="REFERENCE.md gives the 5-shot MSEs only; " + ONE_STEP),
    Row("metasgd_sinusoid_5shot", "metasgd", "sinusoid", None, 5, "mse", 0.90, 0.16, 70_000, "metasgd_sinusoid",
        "REFERENCE.md §4 note (Meta-SGD paper's table)", paper_test_steps=1, note=ONE_STEP),
    Row("metasgd_sinusoid_10shot", "metasgd", "sinusoid", None, 10, "mse", None, None, 70_000, "metasgd_sinusoid",
        "no 10-shot value in REFERENCE.md", paper_test_steps=1,
        note="REFERENCE.md gives the 5-shot MSEs only; " + ONE_STEP),
    Row("mtnet_polynomial_10shot", "mtnet", "polynomial", None, 10, "update_fraction", None, None, 60_000,
        "mtnet_polynomial", "Lee & Choi 2018 (REFERENCE.md §2): the fraction of updated units grows with the order",
        recorded="mtnet_polynomial_60k",
        note="a claim, not a number: reproduced when P(M=1) at the end of training increases with the "
             "polynomial order 0 < 1 < 2"),
]}

# Time-to-accuracy runs longer than their table row's (which stays at the budget of its other rows):
# the same preset trained for a fixed time, its own directory, tested on the same 600 episodes.
TIME_ROWS: dict[str, Row] = {row.name: row for row in [
    replace(ROWS["maml_omniglot_5w1s"], name="maml_omniglot_5w1s_10min", seeds=1,
            time_of="maml_omniglot_5w1s", budget_min=10.0),
    replace(ROWS["maml_omniglot_5w1s"], name="maml_omniglot_5w1s_30min", seeds=1,
            time_of="maml_omniglot_5w1s", budget_min=30.0),
    replace(ROWS["maml_miniimagenet_5w1s"], name="maml_miniimagenet_5w1s_60min", seeds=1,
            time_of="maml_miniimagenet_5w1s", budget_min=60.0),
]}

GROUPS: dict[str, list[str]] = {
    "quick": ["maml_sinusoid_5shot", "maml_omniglot_5w1s"],
    "cpu": list(ROWS),
    "time": list(TIME_ROWS),
}
GROUP_SEEDS = {"quick": 1}  # the quick group proves the pipeline: one seed per row
# Time-to-accuracy: (row, minutes of training), from the row's runs and its TIME_ROWS runs.
TIME_TO_ACCURACY = [("maml_omniglot_5w1s", 10), ("maml_omniglot_5w1s", 30),
                    ("maml_miniimagenet_5w1s", 30), ("maml_miniimagenet_5w1s", 60)]
# Targets set for this machine (issue 12): (row, minutes of training, test accuracy).
ACCURACY_TARGETS = [("maml_omniglot_5w1s", 30, 0.97)]


def select_rows(spec: str) -> list[Row]:
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in GROUPS:
            names += GROUPS[part]
        elif part in ROWS or part in TIME_ROWS:
            names.append(part)
        else:
            raise SystemExit(f"--rows: unknown row or group {part!r}; groups: {', '.join(GROUPS)}; "
                             f"rows: {', '.join([*ROWS, *TIME_ROWS])}")
    return [ROWS.get(n) or TIME_ROWS[n] for n in dict.fromkeys(names)]


# -- the preset's schedule, composed exactly as train.py does ---------------------------------------
def compose(overrides: Sequence[str]):
    """The resolved config ``train.py <overrides>`` sees (Hydra compose on conf/)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from metaplus.config import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    return cfg


@dataclass(frozen=True)
class Schedule:
    """What the preset prescribes and the budget keeps or shrinks."""

    epochs: int
    batches_per_epoch: int
    preset: str | None
    derivative_order: str
    test_inner_steps: int
    # Something counts the preset's epochs (MSL, derivative-order annealing, an outer learning-rate schedule
    # or warm-up): the budget must keep them. Without any, the epochs only space the validations.
    epoch_scheduled: bool = True

    @property
    def iterations(self) -> int:
        return self.epochs * self.batches_per_epoch


def derivative_order(algo: Any) -> str:
    if algo.name == "reptile":
        return "first (Reptile)"
    if algo.get("first_order"):
        return "first"
    if algo.get("da") and int(algo.get("da_epochs") or 0) > 0:
        return f"first, second after {algo.da_epochs} epochs"
    return "second"


def epoch_scheduled(algo: Any) -> bool:
    """Whether anything in the algorithm's config is scheduled over the preset's epochs or steps."""
    return bool(algo.get("msl") or (algo.get("da") and int(algo.get("da_epochs") or 0) > 0) or algo.get("ca")
                or algo.get("lr_schedule", "constant") != "constant" or int(algo.get("warmup_steps") or 0) > 0)


def preset_schedule(row: Row) -> Schedule:
    cfg = compose(row.overrides)
    preset = cfg.get("preset")
    return Schedule(epochs=int(cfg.trainer.max_epochs), batches_per_epoch=int(cfg.data.batches_per_epoch),
                    preset=preset.name if preset else None, derivative_order=derivative_order(cfg.algo),
                    test_inner_steps=int(cfg.algo.test_inner_steps), epoch_scheduled=epoch_scheduled(cfg.algo))


@dataclass(frozen=True)
class Phase:
    """A run of the preset's epochs at one cost per iteration: the multi-step loss (MSL) computes the query
    loss after every inner step while it lasts, derivative-order annealing (DA) trains first order while
    it lasts. A calibration is one epoch, the first phase's, so each phase is measured apart."""

    epochs: int
    overrides: tuple[str, ...] = ()   # the switches that put epoch 0 of a calibration in this phase
    label: str = "every epoch"


PHASE_NAMES = {"msl": ("multi-step loss", "final-step loss"), "da": ("first order", "second order")}  # (on, off)


def epoch_phases(row: Row) -> list[Phase]:
    cfg = compose(row.overrides)
    return phases_of(cfg.algo, int(cfg.trainer.max_epochs))


def phases_of(algo: Any, epochs: int) -> list[Phase]:
    """The epochs split where MSL or DA end; one phase when nothing changes the cost."""
    ends = {}
    if algo.get("msl") and 0 < int(algo.get("msl_epochs") or 0) < epochs:
        ends["msl"] = int(algo.msl_epochs)
    if algo.get("da") and 0 < int(algo.get("da_epochs") or 0) < epochs:
        ends["da"] = int(algo.da_epochs)
    if not ends:
        return [Phase(epochs)]
    bounds = sorted({0, epochs, *ends.values()})
    phases = []
    for start, stop in zip(bounds, bounds[1:]):
        on = {name: start < end for name, end in ends.items()}
        label = ", ".join(PHASE_NAMES[name][not active] for name, active in on.items())
        phases.append(Phase(stop - start, tuple(f"algo.{name}={str(active).lower()}" for name, active in on.items()),
                            f"epochs {start}-{stop - 1}: {label}"))
    return phases


# -- budget scaling ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Timing:
    s_per_iteration: float
    s_per_val_episode: float
    source: str = "measured"


@dataclass(frozen=True)
class Plan:
    val_episodes: int
    epochs: int                      # the preset's, unless the budget holds less than one iteration per epoch
    batches_per_epoch: int
    val_every: int                   # epochs between validations
    validations: int
    planned_iterations: int
    planned_train_s: float
    planned_val_s: float
    schedule_complete: bool          # the preset's epochs are all trained (else the epoch schedules are cut)


def validation_interval(epochs: int, most: int) -> int:
    """The smallest divisor d of ``epochs`` with epochs / d <= most: the last epoch is always validated."""
    most = max(1, most)
    return next(d for d in range(1, epochs + 1) if epochs % d == 0 and epochs // d <= most)


def plan_budget(schedule: Schedule, timing: Timing, budget_s: float, *, val_episodes: int = VAL_EPISODES,
                max_validations: int = MAX_VALIDATIONS, val_share: float = VAL_SHARE,
                plan_share: float = PLAN_SHARE) -> Plan:
    """Keep the preset's epochs, shrink the iterations per epoch to the budget (never above the paper's).

    Validations: as many as fit ``val_share`` of the budget, 1 to ``max_validations``, of ``val_episodes``
    episodes, fewer episodes (down to MIN_VAL_EPISODES) where 5 full ones would not fit. Iterations: what is
    left of ``plan_share`` of the budget. A budget below one iteration per epoch trains that many epochs
    of one iteration (the epoch-valued schedules are then cut, not compressed: schedule_complete false).
    """
    if timing.s_per_val_episode > 0:  # an expensive evaluation: smaller validations, not fewer than 5 of them
        fits = math.floor(val_share * budget_s / (MIN_VALIDATIONS * timing.s_per_val_episode))
        val_episodes = max(MIN_VAL_EPISODES, min(val_episodes, fits))
    one_validation_s = val_episodes * timing.s_per_val_episode
    affordable = math.floor(val_share * budget_s / one_validation_s) if one_validation_s > 0 else max_validations
    wanted = min(max_validations, max(affordable, 1))
    iterations = max(1, math.floor((plan_share * budget_s - wanted * one_validation_s) / timing.s_per_iteration))
    if iterations >= schedule.epochs:
        epochs, batches = schedule.epochs, min(schedule.batches_per_epoch, iterations // schedule.epochs)
        if not schedule.epoch_scheduled and batches < schedule.batches_per_epoch:
            epochs, batches = fewer_fuller_epochs(iterations, schedule, wanted)
    else:
        epochs, batches = iterations, 1
    val_every = validation_interval(epochs, wanted)
    validations = epochs // val_every
    planned = epochs * batches
    return Plan(val_episodes=val_episodes, epochs=epochs, batches_per_epoch=batches, val_every=val_every, validations=validations,
                planned_iterations=planned, planned_train_s=planned * timing.s_per_iteration,
                planned_val_s=validations * one_validation_s,
                schedule_complete=epochs == schedule.epochs or not schedule.epoch_scheduled)


def fewer_fuller_epochs(iterations: int, schedule: Schedule, wanted: int) -> tuple[int, int]:
    """Epochs x batches close to ``iterations`` for a preset nothing schedules over its epochs.

    Keeping its epochs rounds the iterations per epoch down and loses up to an epoch's worth of each
    (MAML Omniglot, 120 epochs: 340 affordable iterations train 240). Here the batches per epoch round
    up and the epochs follow, among those with at least half the wanted validations (not fewer than
    MIN_VALIDATIONS) that validate on the last epoch: 340 iterations, 20 validations wanted -> not 3 x 113
    (113 is prime: one validation) but 3 x 112 = 336, validated every 7 epochs (16 times).
    """
    batches = min(schedule.batches_per_epoch, math.ceil(iterations / schedule.epochs))
    most = min(schedule.epochs, iterations // batches)
    enough = min(wanted, max(MIN_VALIDATIONS, wanted // 2))
    for epochs in range(most, max(1, most * 3 // 4) - 1, -1):
        if epochs // validation_interval(epochs, wanted) >= enough:
            return epochs, batches
    return most, batches


def max_time(budget_s: float) -> str:
    """Lightning's ``max_time`` as DD:HH:MM:SS, rounded up to the second."""
    seconds = math.ceil(budget_s)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{secs:02d}"


def budget_overrides(plan: Plan, schedule: Schedule, budget_s: float) -> list[str]:
    epochs = [] if plan.epochs == schedule.epochs else [f"trainer.max_epochs={plan.epochs}"]
    return [*epochs, f"data.batches_per_epoch={plan.batches_per_epoch}", f"trainer.check_val_every_n_epoch={plan.val_every}",
            f"data.val_episodes={plan.val_episodes}", f"+trainer.max_time={max_time(budget_s)}"]


COMMON = [f"data.test_episodes={TEST_EPISODES}", "logger=csv", "trainer.enable_progress_bar=false",
          "~callbacks.progress_bar"]


# -- calibration ---------------------------------------------------------------------------------------
class CalibrationTimer(IterationTimer):
    """bench.learners.IterationTimer's per-iteration wall times (the first, a warm-up, dropped) plus the
    seconds per validation episode (batch times over the episodes they held: the loader's set-up is not
    counted), each also in CPU seconds of this process (what an unloaded core would take: on a shared
    machine the wall time grows with the load, the CPU time does not), written to ``out`` when fit ends."""

    def __init__(self, out: str):
        super().__init__()
        self.out = Path(out)
        self.cpu_started: float | None = None
        self.cpu_durations: list[float] = []
        self.val_started: tuple[float, float] | None = None
        self.val_seconds = self.val_cpu_seconds = 0.0
        self.val_episodes = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self.cpu_started = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.cpu_started is not None:
            self.cpu_durations.append(time.process_time() - self.cpu_started)
            self.cpu_started = None

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
        self.out.write_text(json.dumps({"s_per_iteration": statistics.fmean(timed), "iteration_times": self.durations,
                                        "cpu_s_per_iteration": statistics.fmean(cpu),
                                        "s_per_val_episode": self.val_seconds / episodes,
                                        "cpu_s_per_val_episode": self.val_cpu_seconds / episodes,
                                        "val_episodes": self.val_episodes}))


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


def load_calibration(store: Path = CALIBRATION) -> dict[str, Any]:
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


def calibrate(row: Row, trainer: str, threads: int, *, force: bool = False, store: Path = CALIBRATION) -> Timing:
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
        overrides = [*row.overrides, *phase.overrides, f"data.batches_per_epoch={iterations}", "trainer.max_epochs=1",
                     f"data.val_episodes={val_episodes}", "test=false", "logger=none",
                     "trainer.enable_progress_bar=false", "~callbacks.progress_bar", "~callbacks.model_checkpoint",
                     "+trainer.enable_checkpointing=false",
                     "+callbacks.calibration._target_=bench.reproduce.CalibrationTimer",
                     f"+callbacks.calibration.out={out}", f"trainer={trainer}", f"hydra.run.dir={work}"]
        run_train(overrides, threads, work / "stdout.log")
        measured_phases.append({"epochs": phase.epochs, "phase": phase.label, **json.loads(out.read_text())})
    # The plan spreads one iteration count over every epoch: its cost is the epoch-weighted mean of the
    # phases' (MAML++ mini-ImageNet: ~12 s per iteration under MSL's 15 epochs, ~2.7 s after; planned on
    # the first alone, its 60-min run trained 14 min).
    epochs = sum(m["epochs"] for m in measured_phases)
    measured = {name: sum(m["epochs"] * m[name] for m in measured_phases) / epochs
                for name in ("s_per_iteration", "cpu_s_per_iteration")}
    measured.update({name: measured_phases[0][name] for name in ("s_per_val_episode", "cpu_s_per_val_episode")})
    timing = timing_of(measured, key)
    entry = {"s_per_iteration": measured["s_per_iteration"], "s_per_val_episode": measured["s_per_val_episode"],
             "cpu_s_per_iteration": measured["cpu_s_per_iteration"],
             "cpu_s_per_val_episode": measured["cpu_s_per_val_episode"], "iterations": iterations,
             "val_episodes": val_episodes, "load_average": os.getloadavg()[0],
             "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if len(measured_phases) > 1:
        entry["phases"] = [{name: m[name] for name in ("phase", "epochs", "s_per_iteration", "cpu_s_per_iteration")}
                           for m in measured_phases]
    store.parent.mkdir(parents=True, exist_ok=True)
    with (store.parent / ".calibration.lock").open("w") as lock:  # several invocations may share it
        fcntl.flock(lock, fcntl.LOCK_EX)
        kept = load_calibration(store)
        kept.setdefault(key, {})[row.name] = entry
        store.write_text(json.dumps(kept, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    return timing


# -- running -------------------------------------------------------------------------------------------
def run_env(threads: int) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "WANDB_MODE": "offline"}
    if "METAPLUS_DATA" not in env:  # ../shared/data beside the checkout (or beside its worktree folder)
        shared = next((p / "shared" / "data" for p in (REPO.parent, REPO.parent.parent)
                       if (p / "shared" / "data").is_dir()), None)
        if shared is not None:
            env["METAPLUS_DATA"] = str(shared)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def run_train(overrides: Sequence[str], threads: int, log: Path) -> None:
    command = [sys.executable, "train.py", *overrides]
    with log.open("a") as handle:
        proc = subprocess.run(command, cwd=REPO, env=run_env(threads), stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"train.py {' '.join(overrides)} failed (exit {proc.returncode}):\n{tail}")


def run_dir(row: Row, seed: int, root: Path = RUNS) -> Path:
    return root / row.name / f"seed{seed}"


def relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def seed_state(directory: Path) -> str:
    """done (results or their summary), resume (a last checkpoint), or new."""
    if (directory / "results.json").is_file() or (directory / "summary.json").is_file():
        return "done"
    if (directory / "checkpoints" / "last.ckpt").is_file():
        return "resume"
    return "new"


def launch_overrides(row: Row, seed: int, directory: Path, budget: list[str], trainer: str) -> list[str]:
    return [*row.overrides, f"seed={seed}", *COMMON, *budget, f"trainer={trainer}", f"hydra.run.dir={relative(directory)}"]


def run_seed(row: Row, seed: int, budget: list[str], trainer: str, threads: int, plan: dict | None,
             root: Path = RUNS) -> str:
    """Train one (row, seed) unless done; resume from last.ckpt with the overrides of its first launch."""
    directory = run_dir(row, seed, root)
    state = seed_state(directory)
    if state == "done":
        print(f"  {row.name} seed {seed}: done, skipped", flush=True)
        return state
    plan_file = directory / "plan.json"
    if state == "resume" and plan_file.is_file():
        overrides = json.loads(plan_file.read_text())["overrides"]
        keep_csv_logs(directory)
        extra = [f"ckpt_path={relative(directory / 'checkpoints' / 'last.ckpt')}"]
    else:
        state = "new"
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        overrides = launch_overrides(row, seed, directory, budget, trainer)
        plan_file.write_text(json.dumps({"overrides": overrides, "threads": threads, "plan": plan}, indent=2) + "\n")
        extra = []
    print(f"  {row.name} seed {seed}: {'resuming' if extra else 'training'} ({threads} thread(s)): python train.py "
          + " ".join(overrides + extra), flush=True)
    run_train(overrides + extra, threads, directory / "stdout.log")
    write_summary(directory, row)
    return state


def keep_csv_logs(directory: Path) -> None:
    """Lightning's CSV logger rewrites csv/metrics.csv: keep the interrupted run's curve beside it."""
    metrics = directory / "csv" / "metrics.csv"
    if metrics.is_file():
        n = len(list((directory / "csv").glob("metrics.before-resume*.csv")))
        metrics.rename(directory / "csv" / f"metrics.before-resume{n}.csv")


# -- per-seed summaries (what reproduction.json and the figures are built from) -------------------------
def training_curve(directory: Path, metric: str) -> list[tuple[float, float]]:
    """(training seconds, validation metric) at every validation, over the run and its resumptions."""
    points: dict[float, float] = {}
    for metrics_csv in sorted((directory / "csv").glob("metrics*.csv")):
        if metric == "acc":
            points.update(dict(val_curve(metrics_csv)))
        else:  # val_curve reads val/acc; the same join on the epoch for val/mse
            rows = list(csv.DictReader(metrics_csv.open()))
            seconds = {r["epoch"]: float(r["time/train_s"]) for r in rows if r.get("time/train_s")}
            values = {r["epoch"]: float(r["val/mse"]) for r in rows if r.get("val/mse")}
            points.update({seconds[e]: values[e] for e in seconds if e in values})
    return sorted(points.items())


def write_summary(directory: Path, row: Row) -> dict:
    """The seed's figures without the machine's paths: committed, and enough to re-render the report."""
    results = json.loads((directory / "results.json").read_text())
    metric = "mse" if row.metric == "mse" else "acc"
    plan = json.loads((directory / "plan.json").read_text()) if (directory / "plan.json").is_file() else {}
    summary = {
        "row": row.name, "seed": results["seed"], "metric": metric,
        "test": results[f"test/{metric}"], "test_ci95": results[f"test/{metric}_ci95"],
        "test_episodes": results.get("test/episodes"),
        "test_by_step": results.get(f"test/{metric}_by_step"),
        "test_ci95_by_step": results.get(f"test/{metric}_ci95_by_step"),
        "val": results.get(f"val/{metric}"),
        "test_ensemble": results.get(f"test/{metric}_ensemble"),
        "test_ensemble_ci95": results.get(f"test/{metric}_ensemble_ci95"),
        "global_step": results["global_step"], "epochs": results.get("epochs"),
        "wall_time_s": results["wall_time_s"],
        "train_s": (training_curve(directory, metric) or [(None, None)])[-1][0],
        "preset": results.get("preset"),
        "derivative_order": derivative_order_of(results.get("config", {}).get("algo", {})),
        "overrides": plan.get("overrides"), "threads": plan.get("threads"), "plan": plan.get("plan"),
        "curve": training_curve(directory, metric),
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def derivative_order_of(algo: dict) -> str | None:
    if not algo:
        return None
    from omegaconf import OmegaConf

    return derivative_order(OmegaConf.create(algo))


def load_summaries(row: Row, root: Path = RUNS) -> list[dict]:
    summaries = []
    for directory in sorted((root / row.name).glob("seed*")):
        if (directory / "summary.json").is_file():
            summaries.append(json.loads((directory / "summary.json").read_text()))
        elif (directory / "results.json").is_file():
            summaries.append(write_summary(directory, row))
    return sorted(summaries, key=lambda s: s["seed"])


# -- the reproduction record -----------------------------------------------------------------------------
def threads_of(summaries: Sequence[dict]) -> int | None:
    """The torch threads the runs used, when they all used the same (the plan depends on it)."""
    threads = {s.get("threads") for s in summaries}
    return threads.pop() if len(threads) == 1 and None not in threads else None


def command_for(row: Row, budget_min: float | None, seeds: int | None = None, threads: int | None = None) -> str:
    if row.recorded:
        return MTNET_POLY_COMMAND
    budget = f"--budget-min {budget_min:g}" if budget_min else "--paper-budget"
    return (f"python bench/reproduce.py --rows {row.name} {budget} --seeds {seeds or row.seeds}"
            + (f" --threads {threads}" if threads else ""))


def time_command(name: str, minutes: float, threads: int | None = None) -> str:
    """The command behind a time-to-accuracy point: its time row's where one trains that long, else the
    table row's at that budget (the table row's own command never names a time row)."""
    timed = next((t for t in TIME_ROWS.values() if t.time_of == name and t.budget_min == minutes), None)
    if timed is not None:
        return (f"python bench/reproduce.py --rows {timed.name} --seeds {timed.seeds}"
                + (f" --threads {threads}" if threads else ""))
    return command_for(ROWS[name], minutes, threads=threads)


def reproduced(row: Row, ours: float | None) -> bool | None:
    """Within the paper's CI or better (above for accuracy, below for MSE); None without a paper value."""
    if row.paper is None or ours is None:
        return None
    margin = row.paper_ci or 0.0
    return ours >= row.paper - margin if row.metric == "acc" else ours <= row.paper + margin


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def row_record(row: Row, summaries: list[dict], root: Path = RUNS) -> dict:
    record: dict[str, Any] = {
        "row": row.name, "algo": row.algo, "data": row.data, "ways": row.ways, "shots": row.shots,
        "metric": row.metric, "paper": row.paper, "paper_ci95": row.paper_ci, "paper_source": row.source,
        "paper_iterations": row.paper_iterations, "preset": row.preset, "note": row.note or None,
    }
    if row.recorded:
        return {**record, **recorded_mtnet(row)}
    if not summaries:
        return {**record, "status": "not run", "command": command_for(row, DEFAULT_BUDGET_MIN)}
    tests = [s["test"] for s in summaries]
    cis = [s["test_ci95"] for s in summaries]
    mean, std = mean_std(tests)
    at_steps = None
    if row.paper_test_steps is not None:
        # Without the test curve (a summary written before it was kept) nothing is compared.
        k = row.paper_test_steps
        points = [((s.get("test_by_step") or [])[k:k + 1], (s.get("test_ci95_by_step") or [])[k:k + 1])
                  for s in summaries]
        if all(value and ci for value, ci in points):
            step_mean, step_std = mean_std([value[0] for value, _ in points])
            at_steps = {"steps": k, "ours": step_mean, "ours_std_over_seeds": step_std,
                        "ours_ci95": statistics.fmean(ci[0] for _, ci in points)}
    ensemble = [s["test_ensemble"] for s in summaries if s.get("test_ensemble") is not None]
    ensemble_mean, ensemble_std = mean_std(ensemble)
    ensemble_ci = statistics.fmean(s["test_ensemble_ci95"] for s in summaries
                                   if s.get("test_ensemble_ci95") is not None) if ensemble else None
    # The paper's protocol decides which figure is compared: MAML++ reports its top-k ensemble.
    compared = ensemble_mean if (row.ensemble and ensemble_mean is not None) else mean
    if row.paper_test_steps is not None:
        compared = at_steps["ours"] if at_steps else None
    iterations = [s["global_step"] for s in summaries]
    budgets = [s["plan"]["budget_min"] for s in summaries if s.get("plan") and s["plan"].get("budget_min")]
    presets = {(s.get("preset") or {}).get("name") for s in summaries}
    record.update({
        "status": "run",
        "ours": mean, "ours_ci95": statistics.fmean(cis), "ours_std_over_seeds": std,
        "ours_ensemble": ensemble_mean, "ours_ensemble_ci95": ensemble_ci, "ours_ensemble_std_over_seeds": ensemble_std,
        "compared": ("ensemble" if compared is ensemble_mean and row.ensemble else
                     f"best checkpoint after {row.paper_test_steps} inner step(s)" if row.paper_test_steps is not None
                     else "best checkpoint"),
        "ours_at_paper_test_steps": at_steps,
        "seeds": [s["seed"] for s in summaries],
        "test_episodes": int(summaries[0]["test_episodes"]) if summaries[0].get("test_episodes") else None,
        "iterations_per_seed": iterations,
        "planned_iterations_per_seed": [(s.get("plan") or {}).get("planned_iterations") for s in summaries],
        "iterations_fraction_of_paper": statistics.fmean(iterations) / row.paper_iterations,
        "train_minutes_per_seed": [round(s["train_s"] / 60, 2) if s.get("train_s") else None for s in summaries],
        "wall_minutes_per_seed": [round(s["wall_time_s"] / 60, 2) for s in summaries],
        "budget_min": budgets[0] if budgets and len(set(budgets)) == 1 else (budgets or None),
        "derivative_order": summaries[0].get("derivative_order"),
        "preset_run": sorted(p for p in presets if p) or None,
        "overrides": summaries[0].get("overrides"),
        "reproduced": reproduced(row, compared),
        "gap": None if row.paper is None or compared is None else compared - row.paper,
        "command": command_for(row, budgets[0] if budgets else None, len(summaries), threads_of(summaries)),
    })
    return record


def recorded_mtnet(row: Row) -> dict:
    """The MT-net polynomial row from bench/results/mtnet_polynomial_60k (update fractions at the end)."""
    folder = RESULTS / row.recorded
    table = folder / "update_fraction.md"
    if not table.is_file():
        return {"status": "not run", "command": MTNET_POLY_COMMAND}
    fractions, steps = {}, {}
    lines = [line for line in table.read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    for line in lines[2:]:
        cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
        order = int(cells["run"].removeprefix("order"))
        fractions[order], steps[order] = float(cells["all"]), int(cells["step"])
    mse = {}
    if (folder / "report.csv").is_file():
        for r in csv.DictReader((folder / "report.csv").open()):
            mse[int(r["data.source.order"])] = (float(r["test_mean"]), float(r["test_ci95"]))
    orders = sorted(fractions)
    grows = all(fractions[a] < fractions[b] for a, b in zip(orders, orders[1:]))
    return {"status": "recorded", "source_results": f"bench/results/{row.recorded}",
            "update_fraction_by_order": {str(o): fractions[o] for o in orders},
            "test_mse_by_order": {str(o): {"mean": m, "ci95": c} for o, (m, c) in sorted(mse.items())},
            "iterations_per_seed": [steps[o] for o in orders], "seeds": [42],
            "iterations_fraction_of_paper": statistics.fmean(steps.values()) / row.paper_iterations,
            "derivative_order": "second", "reproduced": grows, "command": MTNET_POLY_COMMAND}


def runs_at(seeds: list[dict], minutes: float) -> list[dict]:
    """The runs whose budget was ``minutes``: their tests are the figure at that time."""
    direct = [s for s in seeds if ((s.get("plan") or {}).get("budget_min") or 0) == minutes]
    timed = [s for s in direct if s.get("row") in TIME_ROWS]
    if not timed:
        return direct
    # A time row measures t itself. The table row's runs of the same budget count beside it when their
    # plan was made of CPU seconds; older plans, made of wall seconds taken under load, trained well under t.
    return timed + [s for s in direct if s.get("row") not in TIME_ROWS and planned_on_cpu_time(s)]


def planned_on_cpu_time(summary: dict) -> bool:
    return ((summary.get("plan") or {}).get("timing") or "").startswith("measured CPU time")


def time_to_accuracy(summaries: dict[str, list[dict]]) -> list[dict]:
    """Test accuracy after t minutes, per seed, then averaged over the seeds that reach t.

    A run whose budget was t minutes gives its final test directly ("test of a t-min run"). Where no run
    had that budget, a longer run gives an estimate ("val curve"): the best validation accuracy reached within t minutes of training
    (``time/train_s``, validation excluded) shifted by the run's own test - validation difference of its
    evaluated checkpoint (runs are tested once, at the end). A shorter run does not reach t.
    """
    table = []
    for name, minutes in TIME_TO_ACCURACY:
        entry: dict[str, Any] = {"row": name, "minutes": minutes}
        seeds = summaries.get(name, [])
        direct = runs_at(seeds, minutes)
        tests, methods = [s["test"] for s in direct], {f"test of a {minutes}-min run"} if direct else set()
        # Minutes actually trained behind each figure: a t-min budget also pays validations and the plan's
        # rounding, so a run can train well under t (stated next to the figure, not hidden by the label).
        trained = [s["train_s"] / 60 for s in direct if s.get("train_s")]
        for s in seeds if not direct else []:  # an estimate only where no run was tested at that time
            curve = s.get("curve") or []
            if curve and curve[-1][0] >= minutes * 60 and s.get("val") is not None:
                at, best = max(((t, v) for t, v in curve if t <= minutes * 60), key=lambda point: point[1])
                tests.append(best + (s["test"] - s["val"]))
                trained.append(at / 60)
                methods.add("val curve + (test - val)")
        if tests:
            entry.update({"test_acc": statistics.fmean(tests), "seeds": len(tests), "method": ", ".join(sorted(methods)),
                          "trained_min": statistics.fmean(trained) if trained else None, "status": "run"})
        else:
            longest = max((s["curve"][-1][0] / 60 for s in seeds if s.get("curve")), default=None)
            entry.update({"status": "not reached" if seeds else "not run", "longest_train_min": longest,
                          "command": time_command(name, minutes)})
        table.append(entry)
    return table


def target_limits(summaries: dict[str, list[dict]], times: list[dict]) -> list[dict]:
    """For each accuracy target: reached or not, and what limits it, from the runs' own measurements.

    The speed is that of the runs behind the figure at the target's minute (``train_s / global_step``),
    so the iterations the budget holds and the time the paper's iterations would take on this machine
    follow. Accuracy per iteration is every run of the row (table row and time rows) as (iterations
    trained, test accuracy), averaged over the seeds of each run name.
    """
    found = {(t["row"], t["minutes"]): t for t in times}
    out = []
    for name, minutes, target in ACCURACY_TARGETS:
        tested = [s for s in summaries.get(name, []) if s.get("train_s") and s.get("global_step")]
        behind = runs_at(tested, minutes) or tested
        entry: dict[str, Any] = {"row": name, "minutes": minutes, "target": target}
        reached_acc = found.get((name, minutes), {}).get("test_acc")
        entry["test_acc"] = reached_acc
        entry["reached"] = None if reached_acc is None else reached_acc >= target
        if behind:
            # the machine's rate: the runs that had its cores to themselves (most threads) where several ran
            most = max(s.get("threads") or 0 for s in behind)
            s_per_it = statistics.fmean(s["train_s"] / s["global_step"] for s in behind
                                        if (s.get("threads") or 0) == most)
            by_run: dict[str, list[dict]] = {}
            for s in tested:
                by_run.setdefault(s.get("row") or name, []).append(s)
            entry.update({
                "s_per_iteration": s_per_it, "threads": max(s.get("threads") or 0 for s in behind) or None,
                "iterations_in_budget": minutes * 60 / s_per_it,
                "iterations_trained": statistics.fmean(s["global_step"] for s in behind
                                                       if (s.get("threads") or 0) == most),
                "train_min": statistics.fmean(s["train_s"] for s in behind if (s.get("threads") or 0) == most) / 60,
                "accuracy_by_iterations": sorted(
                    ({"run": run, "iterations": statistics.fmean(s["global_step"] for s in group),
                      "test_acc": statistics.fmean(s["test"] for s in group), "seeds": len(group),
                      "threads": max(s.get("threads") or 0 for s in group) or None}
                     for run, group in by_run.items()), key=lambda point: point["iterations"]),
                "paper_iterations": ROWS[name].paper_iterations, "paper": ROWS[name].paper,
                "hours_for_paper_iterations": ROWS[name].paper_iterations * s_per_it / 3600,
            })
        out.append(entry)
    return out


def build_report(rows: Iterable[Row], root: Path = RUNS) -> dict:
    rows = list(rows)
    summaries = {row.name: load_summaries(row, root) for row in rows}
    records = {row.name: row_record(row, summaries[row.name], root) for row in rows}
    # time to accuracy of the table's rows only (a small table, such as the quick group's, stays small)
    named = {row.name for row in rows}
    all_summaries = {name: [s for row in [ROWS[name], *(t for t in TIME_ROWS.values() if t.time_of == name)]
                            for s in load_summaries(row, root)]
                     for name, _ in TIME_TO_ACCURACY if name in named}
    times = [t for t in time_to_accuracy(all_summaries) if t["row"] in named]
    time_runs = [{"row": t.name, "time_of": t.time_of, "minutes": t.budget_min,
                  "command": time_command(t.time_of, t.budget_min, threads_of(load_summaries(t, root)))}
                 for t in TIME_ROWS.values() if t.time_of in named]
    # A table kept in another folder (the quick group's, --out) regenerates there, never into the committed runs.
    # Outside the repository the folder is this machine's own path, which a report never embeds.
    folder = relative(root)
    if root.resolve() == RUNS.resolve():
        out = ""
    else:
        out = " --out " + ("<the folder of this table>" if Path(folder).is_absolute() else folder)
    for entry in [*records.values(), *times, *time_runs]:
        if out and entry.get("command") not in (None, MTNET_POLY_COMMAND):  # that one names its own folder
            entry["command"] += out
    rerender = ("python bench/reproduce.py --report-only" if not out else
                f"python bench/reproduce.py --rows {','.join(row.name for row in rows)}{out} --report-only")
    return {"rows": list(records.values()), "time_to_accuracy": times, "time_runs": time_runs, "rerender": rerender,
            "targets": [t for t in target_limits(all_summaries, times) if t["row"] in named],
            "calibration": load_calibration(root / CALIBRATION.name),
            "protocol": {"test_episodes": TEST_EPISODES, "val_episodes": VAL_EPISODES,
                         "min_val_episodes": MIN_VAL_EPISODES, "min_validations": MIN_VALIDATIONS,
                         "max_validations": MAX_VALIDATIONS, "val_share": VAL_SHARE, "plan_share": PLAN_SHARE,
                         "ci": "1.96 * std / sqrt(episodes), mean over seeds of each seed's CI"}}


# -- rendering ---------------------------------------------------------------------------------------------
def fmt_value(value: float | None, metric: str, ci: float | None = None) -> str:
    if value is None:
        return "–"
    scale, digits = (100, 2) if metric == "acc" else (1, 3)
    text = f"{value * scale:.{digits}f}"
    return text + (f" ± {ci * scale:.{digits}f}" if ci is not None else "")


def fmt_iterations(n: float) -> str:
    return f"{n / 1000:.1f}k" if n >= 1000 else f"{n:.0f}"


def row_label(r: dict) -> str:
    return (f"{r['algo']} {r['data']} {r['ways']}w{r['shots']}s" if r["ways"] else
            f"{r['algo']} {r['data']} {r['shots']}-shot")


def render_markdown(report: dict) -> str:
    paths = report.get("paths") or {"runs": relative(RUNS), "json": relative(JSON_OUT),
                                    "curves": os.path.relpath(RUNS / "curves.png", DOC_OUT.parent)}
    out = ["# Reproduction of the papers' rows",
           "",
           "Generated by `python bench/reproduce.py` from the run directories under "
           f"`{paths['runs']}/` (each seed's `summary.json`); the data is in "
           f"`{paths['json']}`. Accuracies in %, MSE raw. *Ours* is the mean over seeds of "
           "each seed's test metric on the 600 fixed test episodes ± the mean of their 95 % CIs "
           "(1.96·std/√600); *± std* is over seeds. MAML++ rows compare the paper's protocol, the top-5 "
           "validation checkpoint ensemble (the best checkpoint alone in brackets); sinusoid rows compare the "
           "MSE after the paper's number of inner steps at test (1, the Meta-SGD paper's table; the preset's 10 "
           "in brackets). A row is *reproduced* when "
           "ours is within the paper's CI or better (accuracy: at or above paper − CI; MSE: at or below "
           "paper + CI). *Budget* is the training wall-clock budget per seed on this machine and the "
           "meta-iterations it allowed against the paper's.",
           "",
           "| row | paper | ours ± CI95 | ± std (seeds) | reproduced (gap) | iterations ours / paper | budget | "
           "derivative order | preset |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        metric = "acc" if r["metric"] == "acc" else "mse"
        paper = fmt_value(r["paper"], metric, r["paper_ci95"]) if r["paper"] is not None else "–"
        name = row_label(r)
        if r["status"] == "not run":
            out.append(f"| {name} | {paper} | not run | | | – / {fmt_iterations(r['paper_iterations'])} | "
                       f"`{r['command']}` | | {r['preset']} |")
            continue
        if r["status"] == "recorded":
            fractions = ", ".join(f"{v:.3f}" for v in r["update_fraction_by_order"].values())
            verdict = "yes" if r["reproduced"] else "no"
            its = fmt_iterations(statistics.fmean(r["iterations_per_seed"]))
            out.append(f"| {name} (orders 0/1/2) | fraction grows with order | P(M=1) {fractions} | 1 seed | "
                       f"{verdict} | {its} / {fmt_iterations(r['paper_iterations'])} | paper budget, "
                       f"[{r['source_results']}](../{r['source_results']}) | {r['derivative_order']} | "
                       f"{r['preset']} |")
            continue
        ours = fmt_value(r["ours"], metric, r["ours_ci95"])
        std = fmt_value(r["ours_std_over_seeds"], metric)
        if r.get("ours_ensemble") is not None:
            ours = f"{fmt_value(r['ours_ensemble'], metric, r['ours_ensemble_ci95'])} ({ours})"
            std = fmt_value(r["ours_ensemble_std_over_seeds"], metric)
        if r.get("ours_at_paper_test_steps"):
            k = r["ours_at_paper_test_steps"]
            ours = f"{fmt_value(k['ours'], metric, k['ours_ci95'])} after {k['steps']} step(s) ({ours})"
            std = fmt_value(k["ours_std_over_seeds"], metric)
        elif r["row"] in ROWS and ROWS[r["row"]].paper_test_steps is not None:
            ours = f"{ours} (no test curve kept: not compared)"
        gap = "" if r["gap"] is None else f" ({r['gap'] * (100 if metric == 'acc' else 1):+.{2 if metric == 'acc' else 3}f})"
        verdict = ({True: "yes", False: "no"}[r["reproduced"]] if r["reproduced"] is not None else
                   "no paper value" if r["paper"] is None else "not compared") + gap
        its = f"{fmt_iterations(statistics.fmean(r['iterations_per_seed']))} / {fmt_iterations(r['paper_iterations'])}"
        planned = [p for p in r.get("planned_iterations_per_seed") or [] if p]
        if planned and statistics.fmean(r["iterations_per_seed"]) < statistics.fmean(planned):
            its += f" (planned {fmt_iterations(statistics.fmean(planned))}: max_time stopped it)"
        budget = f"{r['budget_min']:g} min" if isinstance(r["budget_min"], (int, float)) else "paper budget"
        minutes = [m for m in r["train_minutes_per_seed"] if m is not None]
        if minutes:
            budget += f" ({statistics.fmean(minutes):.1f} min trained)"
        out.append(f"| {name} | {paper} | {ours} | {std} ({len(r['seeds'])}) | {verdict} | {its} | {budget} | "
                   f"{r['derivative_order']} | {r['preset']} |")
    notes = [f"- {row_label(r)}: {r['note']}" for r in report["rows"] if r.get("note")]
    if notes:
        out += ["", "Notes:", "", *notes]
    out += ["", "## Time to accuracy on this machine", "",
            "Test accuracy on the 600 fixed episodes after *t* minutes of training. From a run whose budget was "
            "*t*: its final test; a time-to-accuracy run of the same preset in its own directory ("
            f"{', '.join(f'`{name}`' for name in TIME_ROWS)}, `--rows time`) and the "
            "row's own runs of that budget (where a time run exists, only those of the row's runs planned on CPU "
            "seconds: older plans, made of wall seconds under load, trained well under *t*); their seeds are "
            "averaged, whatever threads each had (a time run may have both cores, the row's runs one each, side "
            "by side). Where no run had "
            "that budget, from a longer run: the best validation accuracy (100 fixed episodes) reached "
            "within *t* minutes of training (`time/train_s`, validation time excluded) plus that run's own "
            "test − validation difference of its evaluated checkpoint (runs are tested once, at the end).",
            "*Trained* is the training time behind the figure (mean over seeds): a *t*-minute budget also pays "
            "the validations and the plan's rounding to whole iterations per epoch, so it can be well under *t*.",
            "", "| row | t (min) | test acc (%) | trained (min) | seeds | derived from |", "|---|---|---|---|---|---|"]
    for t in report["time_to_accuracy"]:
        if t["status"] == "run":
            trained = f"{t['trained_min']:.1f}" if t.get("trained_min") is not None else "–"
            out.append(f"| {t['row']} | {t['minutes']} | {fmt_value(t['test_acc'], 'acc')} | {trained} | {t['seeds']} | "
                       f"{t['method']} |")
        else:
            why = (f"not reached (longest run trained {t['longest_train_min']:.1f} min)"
                   if t["status"] == "not reached" and t.get("longest_train_min") is not None else t["status"])
            out.append(f"| {t['row']} | {t['minutes']} | {why} | | | `{t['command']}` |")
    for t in report.get("targets", []):
        head = f"Target: {t['row']} at {fmt_value(t['target'], 'acc')} % within {t['minutes']} min: "
        if t["reached"] is None:
            out += ["", head + "not measured yet."]
            continue
        if t["reached"]:
            out += ["", head + f"reached ({fmt_value(t['test_acc'], 'acc')} %)."]
            continue
        points = "; ".join(f"{fmt_value(p['test_acc'], 'acc')} % after {p['iterations']:.0f} ({p['run']}, "
                           f"{p['seeds']} seed(s), {p['threads']} thread(s))" for p in t.get("accuracy_by_iterations", []))
        out += ["", head + f"not reached ({fmt_value(t['test_acc'], 'acc')} %). What limits it, from these runs: "
                f"the {t['minutes']}-min run(s) with the most threads ({t['threads']}: the machine's rate) trained "
                f"{t['iterations_trained']:.0f} meta-iterations in {t['train_min']:.1f} min at "
                f"{t['s_per_iteration']:.2f} s each (the rest of the budget went to validation and testing), "
                f"{t['iterations_in_budget']:.0f} if all "
                f"{t['minutes']} min trained. Test accuracy against meta-iterations: {points}. The paper's "
                f"{fmt_value(t['paper'], 'acc')} % took {fmt_iterations(t['paper_iterations'])} meta-iterations, "
                f"{t['hours_for_paper_iterations']:.0f} h at this speed. The limit is accuracy per iteration at a "
                "CPU's iteration rate, not the framework's overhead (bench/results/speed.md: the default engine "
                "runs at its meta floor, the same meta-gradient written out by hand)."]
    out += ["", "## How a budget is spent", "",
            "Each seed is `python train.py algo=A data=D data.ways=W data.shots=S seed=K` (the pair's preset "
            "composes the published setting) plus the budget overrides recorded in the JSON (`overrides`). A "
            "calibration run (a few meta-iterations and validation episodes, side by side with the other jobs; one "
            "per phase where the cost of an iteration changes over the epochs, MSL's or DA's, weighted by the "
            "phase's epochs: plans from 2026-12-05 13:00 UTC on) "
            "measures seconds per meta-iteration and per validation episode (on a CPU the plan uses its CPU "
            "seconds: the wall seconds of a calibration taken beside other jobs grow with their load; plans whose "
            "`timing` in plan.json reads `measured (...)` rather than `measured CPU time (...)` were made on wall "
            "seconds and trained under their budget, as the trained minutes show); the preset's epochs are kept "
            "(MSL, cosine and derivative-order schedules count epochs) and `data.batches_per_epoch` shrinks so "
            f"that the iterations and validations fit {PLAN_SHARE:.0%} of the budget (a preset with nothing "
            "scheduled over its epochs, such as MAML's constant meta learning rate, rounds the iterations per "
            "epoch up and trains fewer epochs rather than losing up to an epoch's worth of iterations per epoch: "
            "plans from 2026-12-04 on), with `+trainer.max_time` = "
            f"the budget as the safety net. Validation: {VAL_EPISODES} fixed episodes (fewer, down to "
            f"{MIN_VAL_EPISODES}, where {MIN_VALIDATIONS} validations of {VAL_EPISODES} would not fit), at most "
            f"{MAX_VALIDATIONS} times and at most {VAL_SHARE:.0%} of the budget, always after the last epoch. "
            "A budget below one "
            "iteration per epoch trains fewer epochs of one iteration (the epoch schedules are then cut). "
            f"Test: {TEST_EPISODES} fixed episodes, outside the budget.", ""]
    calibration = report.get("calibration") or {}
    if calibration:
        out += ["Latest calibrations: wall seconds per meta-iteration and per validation episode (they grow with "
                "the machine's load, given as the 1-minute load average) and the CPU seconds of the same work (about "
                "what an unloaded core takes; what a CPU plan uses where it is recorded):", "",
                "| device | row | s / iteration | ms / val episode | CPU s / iteration | CPU ms / val episode | "
                "load average | date |", "|---|---|---|---|---|---|---|---|"]
        for device, entries in sorted(calibration.items()):
            for name, c in sorted(entries.items()):
                load = f"{c['load_average']:.1f}" if c.get("load_average") is not None else "–"
                cpu_it = f"{c['cpu_s_per_iteration']:.3f}" if "cpu_s_per_iteration" in c else "–"
                cpu_val = f"{c['cpu_s_per_val_episode'] * 1000:.0f}" if "cpu_s_per_val_episode" in c else "–"
                out.append(f"| {device} | {name} | {c['s_per_iteration']:.3f} | {c['s_per_val_episode'] * 1000:.0f} | "
                           f"{cpu_it} | {cpu_val} | {load} | {c.get('date', '–')} |")
        out.append("")
    out += ["## Curves", "", "Validation metric against training time, one line per seed: "
            f"![curves]({paths['curves']})", "",
            "## Regenerate", "", "One command per row (from the repository root; `--threads` is the torch threads "
            "each run used, where recorded: the plan depends on it; `--jobs 2` runs two at once, by default with "
            "OMP_NUM_THREADS = cores / jobs; finished seeds are skipped, interrupted ones resume; seeds 2 and up "
            "of a row ran with `--reuse-calibration`, at seed 1's plan. Each seed's plan.json records the plan "
            "and overrides it ran: a rerun calibrates again, and a row planned on wall seconds before CPU plans "
            "used CPU seconds would now plan more iterations than it recorded):", ""]
    out += [f"- {r['row']}: `{r['command']}`" for r in report["rows"]]
    out += [f"- {t['row']} (time to accuracy): `{t['command']}`" for t in report.get("time_runs", [])]
    out += ["", "The papers' full budgets, meant for a GPU (`trainer=gpu` when CUDA is there; it prints first one "
            "cost line per row, meta-iterations × s/iteration measured by a calibration on that device, then runs "
            "unattended, resumable): `python bench/reproduce.py --rows cpu --paper-budget` "
            "(`--estimate-only` prints the costs and stops). No GPU figure is quoted on this page: none has been "
            f"measured yet. Re-render this page from the run directories: `{report.get('rerender') or 'python bench/reproduce.py --report-only'}`.",
            ""]
    return "\n".join(out)


def plot_curves(report: dict, root: Path, path: Path) -> bool:
    rows = [r for r in report["rows"] if r["status"] == "run"]
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(rows))
    lines = math.ceil(len(rows) / columns)
    fig, axes = plt.subplots(lines, columns, figsize=(4.2 * columns, 3.2 * lines), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        metric = "acc" if r["metric"] == "acc" else "mse"
        runs = [(f"seed {s['seed']}", s) for s in load_summaries(ROWS[r["row"]], root)]
        runs += [(f"seed {s['seed']}, {t.budget_min:g}-min run", s) for t in TIME_ROWS.values()
                 if t.time_of == r["row"] for s in load_summaries(t, root)]
        for label, s in runs:
            if s.get("curve"):
                xs, ys = zip(*s["curve"])
                ax.plot([x / 60 for x in xs], [y * (100 if metric == "acc" else 1) for y in ys], alpha=0.85,
                        marker=".", label=label)
        if r["paper"] is not None:
            ax.axhline(r["paper"] * (100 if metric == "acc" else 1), color="grey", ls="--", lw=1, label="paper")
        ax.set_xlim(left=0)
        ax.set(title=r["row"], xlabel="training time (min)", ylabel=f"val {'acc (%)' if metric == 'acc' else 'mse'}")
        if metric == "mse":
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write_report(rows: Sequence[Row], root: Path = RUNS, json_out: Path = JSON_OUT, doc_out: Path = DOC_OUT) -> dict:
    report = build_report(rows, root)
    def shown(path: Path) -> str:  # never the machine's absolute path: from the repository, else from the page
        named = relative(path)
        return os.path.relpath(path, doc_out.parent) if Path(named).is_absolute() else named

    report["paths"] = {"runs": shown(root), "json": shown(json_out),
                       "curves": os.path.relpath(root / "curves.png", doc_out.parent)}
    json_out.parent.mkdir(parents=True, exist_ok=True)
    doc_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2) + "\n")
    plot_curves(report, root, root / "curves.png")
    doc_out.write_text(render_markdown(report))
    print(f"saved {relative(json_out)}, {relative(doc_out)} and {relative(root / 'curves.png')}")
    return report


# -- main --------------------------------------------------------------------------------------------------
def threads_per_job(jobs: int, threads: int | None) -> int:
    return threads or max(1, (os.cpu_count() or 1) // jobs)


def checked_schedule(row: Row) -> Schedule:
    schedule = preset_schedule(row)
    if schedule.preset != row.preset:
        raise SystemExit(f"{row.name}: composes preset {schedule.preset!r}, the registry expects {row.preset!r}")
    return schedule


def prepare_row(row: Row, schedule: Schedule, args, trainer: str, threads: int) -> tuple[list[str], dict]:
    """The budget overrides of a row and their plan (printed and recorded in plan.json)."""
    if args.paper_budget:
        return [], {"paper_budget": True, "iterations": schedule.iterations}
    budget_min = row.budget_min or args.budget_min
    budget_s = budget_min * 60
    timing = calibrate(row, trainer, threads, force=not args.reuse_calibration, store=args.root / CALIBRATION.name)
    plan = plan_budget(schedule, timing, budget_s)
    record = {"budget_min": budget_min, "s_per_iteration": timing.s_per_iteration,
              "s_per_val_episode": timing.s_per_val_episode, "timing": timing.source,
              "preset_epochs": schedule.epochs, "preset_batches_per_epoch": schedule.batches_per_epoch, **asdict(plan)}
    print(f"{row.name}: {timing.s_per_iteration:.3f} s/iteration, {timing.s_per_val_episode * 1000:.0f} ms per "
          f"validation episode ({timing.source}) -> {plan.epochs} epochs x {plan.batches_per_epoch} iterations "
          f"(preset {schedule.epochs} x {schedule.batches_per_epoch}), {plan.validations} validation(s) every "
          f"{plan.val_every} epoch(s) on {plan.val_episodes} episodes, max_time {max_time(budget_s)}"
          + ("" if plan.schedule_complete else f"; the budget holds fewer than one iteration per epoch: "
                                               f"{plan.epochs} of the preset's {schedule.epochs} epochs"), flush=True)
    return budget_overrides(plan, schedule, budget_s), record


def estimate_paper_budget(rows: Sequence[Row], args, trainer: str, threads: int) -> None:
    """One line per row: the paper's iterations x seconds per iteration (and where that figure is from)."""
    key = device_key(trainer, threads)
    for row in rows:
        if row.recorded:
            print(f"{row.name}: recorded at the paper budget in bench/results/{row.recorded} (not re-run)")
            continue
        schedule = preset_schedule(row)
        cached = load_calibration(args.root / CALIBRATION.name)
        if args.no_calibrate:
            kind, entry = next(((k, v[row.name]) for k, v in cached.items() if row.name in v), (None, None))
            if entry is None:
                print(f"{row.name}: {schedule.iterations} iterations x ? s (no measurement; drop --no-calibrate)")
                continue
            measured = timing_of(entry, kind)
            timing = replace(measured, source=measured.source.replace(f"({kind})", f"on {kind}")
                             + ("" if kind == key else f", not on this device ({key})"))
        else:
            timing = calibrate(row, trainer, threads, store=args.root / CALIBRATION.name)
        val_s = schedule.epochs * 200 * timing.s_per_val_episode  # the data's val_episodes, every epoch
        test_s = TEST_EPISODES * (1 + (5 if row.ensemble else 0)) * timing.s_per_val_episode
        total_h = (schedule.iterations * timing.s_per_iteration + val_s + test_s) / 3600
        print(f"{row.name}: {schedule.iterations} iterations x {timing.s_per_iteration:.3f} s/iteration "
              f"({timing.source}) + validation/test ≈ {total_h:.1f} h per seed x {args.seeds or row.seeds} seed(s)",
              flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=None, help="a group (quick, cpu, time) or a comma list of row names "
                                                     "(default: quick; with --report-only, every row)")
    parser.add_argument("--budget-min", type=float, default=None,
                        help=f"training minutes per run (default: {QUICK_BUDGET_MIN:g} for quick, else 30)")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds 1..N for every row (default: the row's own; 1 for the quick group)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each with OMP_NUM_THREADS = cores / jobs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--paper-budget", action="store_true", help="the papers' full budgets (meant for a GPU)")
    parser.add_argument("--trainer", default=None, help="trainer config (default: gpu with --paper-budget when CUDA "
                                                        "is available, else default)")
    parser.add_argument("--estimate-only", action="store_true", help="with --paper-budget: print the costs, run nothing")
    parser.add_argument("--no-calibrate", action="store_true", help="estimates from cached measurements only")
    parser.add_argument("--reuse-calibration", action="store_true",
                        help="plan with the cached measurement of this device when there is one (default: measure "
                             "again, since the s/iteration of a shared machine moves with its load)")
    parser.add_argument("--report-only", action="store_true", help="re-render the JSON and markdown, run nothing")
    parser.add_argument("--out", type=Path, default=None,
                        help="runs, calibrations and the report of these rows in this folder (default: the committed "
                             f"reproduction, {relative(RUNS)}, with {relative(JSON_OUT)} and {relative(DOC_OUT)}; "
                             f"for the quick group {relative(QUICK_RUNS)})")
    args = parser.parse_args(argv)
    if args.rows is None:
        args.rows = None if args.report_only else "quick"
    args.root = (args.out or (QUICK_RUNS if args.rows == "quick" else RUNS)).resolve()

    rows = select_rows(args.rows) if args.rows else list(ROWS.values())

    def report() -> dict:  # the committed table holds every row; another folder's, the rows it ran
        if args.root == RUNS.resolve():
            return write_report(list(ROWS.values()), RUNS, JSON_OUT, DOC_OUT)
        return write_report(rows, args.root, args.root / JSON_OUT.name, args.root / DOC_OUT.name)
    for row in rows:  # a time-to-accuracy row is defined by its training time: nothing may change it
        if row.budget_min and (args.paper_budget or args.budget_min not in (None, row.budget_min)):
            raise SystemExit(f"{row.name} always trains {row.budget_min:g} min (it measures {row.time_of} after "
                             f"that time); drop --budget-min/--paper-budget or run {row.time_of} instead")
    if args.report_only:
        report()
        return
    if args.budget_min is None:
        args.budget_min = QUICK_BUDGET_MIN if args.rows == "quick" else DEFAULT_BUDGET_MIN
    if args.trainer is None:
        args.trainer = "default"
        if args.paper_budget:
            import torch

            args.trainer = "gpu" if torch.cuda.is_available() else "default"
    threads = threads_per_job(args.jobs, args.threads)
    if args.paper_budget:
        estimate_paper_budget(rows, args, args.trainer, threads)
        if args.estimate_only:
            return
    def seeds_of(row: Row) -> range:
        return range(1, (args.seeds or GROUP_SEEDS.get(args.rows) or row.seeds) + 1)

    pending = []
    for row in (r for r in rows if not r.recorded):
        if all(seed_state(run_dir(row, s, args.root)) == "done" for s in seeds_of(row)):
            print(f"{row.name}: done, skipped", flush=True)
        else:
            pending.append(row)
    schedules = {row.name: checked_schedule(row) for row in pending}  # one at a time: Hydra's state is global
    started = time.time()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:  # calibrations side by side, as the runs will be
        prepared = list(pool.map(lambda row: prepare_row(row, schedules[row.name], args, args.trainer, threads),
                                 pending))
    jobs = [(row, seed, budget, plan) for row, (budget, plan) in zip(pending, prepared)
            for seed in seeds_of(row)]
    failures = []

    def work(job):
        row, seed, budget, plan = job
        try:
            run_seed(row, seed, budget, args.trainer, threads, plan, args.root)
        except RuntimeError as error:  # one failed seed must not lose the others' results
            failures.append(f"{row.name} seed {seed}: {error}")
            print(f"FAILED {row.name} seed {seed}: {error}", flush=True)

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(work, jobs))
    if jobs:
        print(f"{len(jobs)} run(s) in {(time.time() - started) / 60:.1f} min", flush=True)
    report()
    if failures:
        raise SystemExit("failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
