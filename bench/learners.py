"""Benchmark (issue 5): MAML, FOMAML, ANIL, Reptile, Meta-SGD and pre-training, same budget, same tests.

One Hydra multirun per dataset (``train.py -m algo=maml,fomaml,anil,reptile,metasgd,pretrain ...``),
every algorithm with its own config defaults except the shared budget below; the table is written by
``python -m metaplus.report`` from the multirun's ``results.json`` files, then copied to
``bench/results/learners_<dataset>.md/.csv`` with one extra column, the training wall time per
meta-iteration, measured by :class:`IterationTimer` (injected as ``+callbacks.timer``) and written
into results.json as ``train/s_per_iteration``.

    OMP_NUM_THREADS=1 .venv/bin/python bench/learners.py                 # sinusoid and omniglot
    OMP_NUM_THREADS=1 .venv/bin/python bench/learners.py --datasets sinusoid --iterations 2000

Budget (defaults): sinusoid 5- and 10-shot: meta-batch 25, ``--iterations`` meta-iterations, 600
fixed test tasks; Omniglot 5-way 1-shot: Conv-4 with 32 filters, meta-batch 8, ``--omniglot-iterations``
meta-iterations, inner lr 0.4 for all (MAML's Omniglot value), ``--omniglot-test-episodes`` fixed
episodes. Each algorithm evaluates with its own config's ``test_inner_steps`` (10; Meta-SGD 1, as its
paper: its learned rates are meta-trained for one step, and 10 steps of them diverge on sinusoid). Training is far too short to reach the published numbers; it compares the learners at
an equal, small budget on a shared 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from metaplus.results import portable

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ALGOS = "maml,fomaml,anil,reptile,metasgd,pretrain"
TIMING_KEY = "train/s_per_iteration"


class IterationTimer(Callback):
    """Wall time of each training batch (one meta-iteration: adaptation, backward, optimizer step);
    the mean over all but the first (warm-up) is logged at the end of the test, so it is among the
    metrics trainer.test returns and goes into ``results.json``."""

    def __init__(self):
        self.started: float | None = None
        self.durations: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.started is not None:
            self.durations.append(time.perf_counter() - self.started)
            self.started = None

    def on_test_epoch_end(self, trainer, pl_module):
        timed = self.durations[1:] or self.durations
        if timed:  # float64: the exact mean (a Python float would be logged as float32)
            pl_module.log(TIMING_KEY, torch.tensor(statistics.fmean(timed), dtype=torch.float64))


def budget(dataset: str, args: argparse.Namespace) -> list[str]:
    """The overrides every algorithm of a dataset's multirun shares."""
    epochs = 2
    per_epoch = (
        max(1, args.iterations // epochs) if dataset == "sinusoid" else max(1, args.omniglot_iterations // epochs)
    )
    common = [
        f"trainer.max_epochs={epochs}",
        f"data.batches_per_epoch={per_epoch}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        "+callbacks.timer._target_=bench.learners.IterationTimer",
    ]
    if dataset == "sinusoid":
        return [
            *common,
            "data=sinusoid",
            "data.shots=5,10",
            "data.meta_batch_size=25",
            "data.val_episodes=100",
            "data.test_episodes=600",
        ]
    return [
        *common,
        "data=omniglot",
        "model=conv4",
        "model.filters=32",
        "data.ways=5",
        "data.shots=1",
        "data.meta_batch_size=8",
        "data.val_episodes=40",
        f"data.test_episodes={args.omniglot_test_episodes}",
        "algo.inner_lr=0.4",
    ]


def multirun(dataset: str, args: argparse.Namespace) -> tuple[Path, list[str]]:
    sweep = REPO / "outputs" / "bench" / f"learners_{dataset}"
    shutil.rmtree(sweep, ignore_errors=True)
    command = [sys.executable, "train.py", "-m", f"algo={ALGOS}", *budget(dataset, args), f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "WANDB_MODE": "offline"}
    env.setdefault("METAPLUS_DATA", str(REPO.parent / "shared" / "data"))
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, env=env, check=True)
    return sweep, command


def timings(sweep: Path) -> dict[tuple[str, str], float]:
    """(algo, data label as the report prints it) -> s / meta-iteration, from each job's results.json."""
    from metaplus.report import data_label, find_results, load_runs

    return {
        (str(run.config.get("algo.name")), data_label(run)): run.results[TIMING_KEY]
        for run in load_runs(find_results([sweep]))
        if TIMING_KEY in run.results
    }


def add_timing_column(report_md: str, seconds: dict[tuple[str, str], float]) -> str:
    """Append ``s / meta-iteration`` to the report's first table (its rows are named by algo and data)."""
    out, header, done = [], None, False
    for line in report_md.splitlines():
        if done or not line.startswith("|"):
            done = done or header is not None
            out.append(line)
        elif header is None:
            header = [c.strip() for c in line.strip("|").split("|")]
            out.append(line + " s / meta-iteration |")
        elif line.startswith("|---"):
            out.append(line + "---|")
        else:
            cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
            value = seconds.get((cells.get("algo", ""), cells.get("data", "")))
            out.append(line + (f" {value:.3f} |" if value is not None else " – |"))
    return "\n".join(out) + "\n"


def publish(dataset: str, sweep: Path, command: list[str]) -> Path:
    subprocess.run(
        [sys.executable, "-m", "metaplus.report", str(sweep), "--title", f"learners_{dataset}"],
        cwd=REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    md = add_timing_column((sweep / "report.md").read_text(), timings(sweep))
    md += "\nCommand (from the repository root, OMP_NUM_THREADS=1):\n\n    " + " ".join(portable(command[1:])) + "\n"
    target = RESULTS / f"learners_{dataset}.md"
    target.write_text(md.replace("report.png", f"learners_{dataset}.png"))
    shutil.copy(sweep / "report.csv", RESULTS / f"learners_{dataset}.csv")
    shutil.copy(sweep / "report.png", RESULTS / f"learners_{dataset}.png")
    print(md)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="sinusoid,omniglot")
    parser.add_argument("--iterations", type=int, default=400, help="sinusoid meta-iterations per run")
    parser.add_argument("--omniglot-iterations", type=int, default=60)
    parser.add_argument("--omniglot-test-episodes", type=int, default=200)
    args = parser.parse_args()
    for dataset in args.datasets.split(","):
        sweep, command = multirun(dataset, args)
        publish(dataset, sweep, command)


if __name__ == "__main__":
    main()
