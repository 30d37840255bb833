"""Bench jobs: the trained run directories the notebooks load in full mode.

Each notebook of notebooks/ shows its finding from runs trained here once, at the budget stated
below, never by training inside the notebook (its fast mode, METAPLUS_NOTEBOOK_FAST=1, trains tiny
runs instead and is what the tests execute). One command regenerates one notebook's runs:

    python bench/notebook_runs.py --runs maml_basics          # MAML vs pre-training, sinusoid 5-shot
    python bench/notebook_runs.py --runs learners_compared    # six learners, Omniglot 5w1s, Conv-4
    python bench/notebook_runs.py --runs mamlpp_ablation      # MAML++ ablation, Omniglot 20w1s, 3 seeds
    python bench/notebook_runs.py --list                      # the jobs and budgets, without running

Every job is one ``train.py`` process (one thread unless --threads), trained into a temporary folder
beside its destination and moved to bench/results/notebook_runs/<name>/<job>/ only once it finished,
so an interrupted job leaves nothing half-written. What is kept is small: ``results.json``, the best
checkpoint, ``.hydra/config.yaml`` and ``overrides.yaml`` (``.hydra/hydra.yaml`` and the last checkpoint
are dropped: the first holds this machine's paths, the second is not what ``metaplus.load`` reads).
Jobs already present are skipped; --force retrains them.

mtnet_masks needs no job here: it shows bench/results/mtnet_polynomial_60k/ (bench/mtnet.py).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from metaplus.benchmarking.processes import measured

REPO = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO / "bench" / "results" / "notebook_runs"

QUIET = ["logger=none", "trainer.enable_progress_bar=false", "~callbacks.progress_bar", "ensemble_top_k=0"]

# maml_basics: the MAML paper's sinusoid setting (preset maml_sinusoid: MLP 1-40-40-1, one inner SGD step
# of 0.01, Adam 1e-3, K = 5 query points), with 8,000 meta-iterations of 10 tasks instead of 70,000 x 25
# (MAML about 9 minutes on one CPU thread, pre-training about 3); pre-training sees the same 80,000 tasks' points and is
# fine-tuned on each test task exactly as MAML adapts (10 SGD steps of 0.01 on every parameter).
_SINUSOID = [
    "data=sinusoid",
    "data.shots=5",
    "data.queries=5",
    "data.meta_batch_size=10",
    "data.batches_per_epoch=1000",
    "trainer.max_epochs=8",
    "algo.test_inner_steps=10",
    "algo.inner_lr=0.01",
    "algo.meta_lr=0.001",
    "data.val_episodes=100",
    "data.test_episodes=600",
]

# learners_compared: Omniglot 5-way 1-shot on the Vinyals split with Conv-4 (as the ANIL paper compares
# MAML and ANIL), every learner from the same 20 epochs x 500 meta-iterations of 8 tasks (each learner's
# published preset otherwise, e.g. MAML's 5 inner steps of 0.4 and 10 at test), 600 fixed test episodes.
_OMNIGLOT = [
    "data=omniglot",
    "data.ways=5",
    "data.shots=1",
    "data.meta_batch_size=8",
    "data.batches_per_epoch=500",
    "trainer.max_epochs=20",
    "data.test_episodes=600",
    "algo.eval_curve=test",
]
LEARNERS = {
    "maml": ["algo=maml"],
    "fomaml": ["algo=fomaml"],
    "anil": ["algo=anil"],
    "reptile": ["algo=reptile"],
    "metasgd": ["algo=metasgd"],
    "pretrain": ["algo=pretrain", "algo.finetune=all"],
}

# mamlpp_ablation: conf/experiment/ablation_mamlpp.yaml (Omniglot 20-way 1-shot, second order, 5 inner
# steps: a setting where MAML++'s fixes matter), each variant x seeds 1, 2, 3, at 30 of its 100 epochs
# (x 500 meta-iterations of 8 tasks).
ABLATION_VARIANTS = ["maml", "msl", "da", "bnrs", "bnwb", "lslr", "ca", "mamlpp"]
ABLATION_SEEDS = [1, 2, 3]
_ABLATION = ["experiment=ablation_mamlpp", "trainer.max_epochs=30"]

# name -> {job folder: train.py overrides}; the job folders of mamlpp_ablation are a sweep directory's
# (<number>_<variant>_seed<seed>) so metaplus.report reads the folder as one multirun.
JOBS: dict[str, dict[str, list[str]]] = {
    "maml_basics": {"maml": ["algo=maml", *_SINUSOID], "pretrain": ["algo=pretrain", "algo.finetune=all", *_SINUSOID]},
    "learners_compared": {name: [*algo, *_OMNIGLOT] for name, algo in LEARNERS.items()},
    "mamlpp_ablation": {
        f"{i * len(ABLATION_SEEDS) + j}_{variant}_seed{seed}": [*_ABLATION, f"ablation={variant}", f"seed={seed}"]
        for i, variant in enumerate(ABLATION_VARIANTS)
        for j, seed in enumerate(ABLATION_SEEDS)
    },
}
BUDGETS = {
    "maml_basics": "per learner 8 epochs x 1,000 meta-iterations x 10 tasks (80,000 tasks); one thread: MAML ~9 min, pre-training ~3 min",
    "learners_compared": "per learner 20 epochs x 500 meta-iterations x 8 tasks; ~1-3 CPU-hours each, 6 learners",
    "mamlpp_ablation": "per job 30 epochs x 500 meta-iterations x 8 tasks; 8 variants x 3 seeds = 24 jobs, "
    "~2-4 CPU-hours each (a GPU: minutes)",
}


def command(name: str, job: str) -> str:
    """The train.py command line one job runs (for the notebooks' and --list's text)."""
    return " ".join(["python train.py", *JOBS[name][job]])


def train(name: str, job: str, threads: int) -> Path:
    """Train one job into a temporary folder, keep its small files, move it into place; return it."""
    final = RUNS_DIR / name / job
    scratch = RUNS_DIR / name / f".{job}.partial"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "train.py", *JOBS[name][job], *QUIET, f"hydra.run.dir={scratch}"]
    start = time.time()
    old_threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        peak_gb = measured(args, f"{name}/{job}", cwd=REPO)
    finally:
        if old_threads is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = old_threads
    results = json.loads((scratch / "results.json").read_text())
    keep = {"results.json", ".hydra", results["best_checkpoint"]}
    (scratch / ".hydra" / "hydra.yaml").unlink(missing_ok=True)
    for path in sorted(scratch.rglob("*"), reverse=True):
        relative = path.relative_to(scratch)
        if path.is_file() and not any(relative == Path(k) or Path(k) in relative.parents for k in keep):
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if final.exists():
        shutil.rmtree(final)
    scratch.rename(final)
    print(f"{name}/{job}: {time.time() - start:.0f} s wall, peak {peak_gb} GB -> {final.relative_to(REPO)}", flush=True)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", choices=sorted(JOBS), help="which notebooks' runs to train")
    parser.add_argument("--jobs", nargs="+", help="only these job folders of the chosen runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--force", action="store_true", help="retrain jobs whose folder already exists")
    parser.add_argument("--list", action="store_true", help="print the jobs, their commands and budgets")
    args = parser.parse_args()
    if not args.runs and not args.list:
        parser.error("name --runs (one or more of: " + ", ".join(sorted(JOBS)) + ") or --list")
    for name in args.runs or sorted(JOBS):
        unknown = sorted(set(args.jobs or ()) - set(JOBS[name]))
        if unknown and not args.list:
            parser.error(f"--jobs {' '.join(unknown)}: {name} has the jobs " + ", ".join(JOBS[name]))
        print(f"{name}: {BUDGETS[name]}")
        for job in JOBS[name]:
            if args.jobs and job not in args.jobs:
                continue
            done = (RUNS_DIR / name / job / "results.json").is_file()
            if args.list:
                print(f"  {job} ({'present' if done else 'missing'}): {command(name, job)}")
            elif done and not args.force:
                print(f"  {job}: present, skipped (--force retrains it)")
            else:
                train(name, job, args.threads)


if __name__ == "__main__":
    main()
