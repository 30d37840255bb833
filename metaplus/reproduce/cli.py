"""The command line: ``python -m metaplus.reproduce`` (or ``python bench/reproduce.py``), see the package
docstring."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import metaplus.reproduce
from metaplus.reproduce import locations
from metaplus.reproduce.calibration import calibrate, device_key, load_calibration, timing_of
from metaplus.reproduce.locations import relative
from metaplus.reproduce.phases import Schedule, preset_schedule
from metaplus.reproduce.planner import (
    DEFAULT_BUDGET_MIN,
    QUICK_BUDGET_MIN,
    TEST_EPISODES,
    budget_overrides,
    max_time,
    plan_budget,
)
from metaplus.reproduce.registry import GROUP_SEEDS, ROWS, Row, select_rows
from metaplus.reproduce.render import write_report
from metaplus.reproduce.runner import run_dir, run_seed, seed_state


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
    timing = calibrate(
        row, trainer, threads, force=not args.reuse_calibration, store=args.root / locations.CALIBRATION.name
    )
    plan = plan_budget(schedule, timing, budget_s)
    record = {
        "budget_min": budget_min,
        "s_per_iteration": timing.s_per_iteration,
        "s_per_val_episode": timing.s_per_val_episode,
        "timing": timing.source,
        "preset_epochs": schedule.epochs,
        "preset_batches_per_epoch": schedule.batches_per_epoch,
        **asdict(plan),
    }
    print(
        f"{row.name}: {timing.s_per_iteration:.3f} s/iteration, {timing.s_per_val_episode * 1000:.0f} ms per "
        f"validation episode ({timing.source}) -> {plan.epochs} epochs x {plan.batches_per_epoch} iterations "
        f"(preset {schedule.epochs} x {schedule.batches_per_epoch}), {plan.validations} validation(s) every "
        f"{plan.val_every} epoch(s) on {plan.val_episodes} episodes, max_time {max_time(budget_s)}"
        + (
            ""
            if plan.schedule_complete
            else f"; the budget holds fewer than one iteration per epoch: "
            f"{plan.epochs} of the preset's {schedule.epochs} epochs"
        ),
        flush=True,
    )
    return budget_overrides(plan, schedule, budget_s), record


def estimate_paper_budget(rows: Sequence[Row], args, trainer: str, threads: int) -> None:
    """One line per row: the paper's iterations x seconds per iteration (and where that figure is from)."""
    key = device_key(trainer, threads)
    for row in rows:
        if row.recorded:
            print(f"{row.name}: recorded at the paper budget in bench/results/{row.recorded} (not re-run)")
            continue
        schedule = preset_schedule(row)
        cached = load_calibration(args.root / locations.CALIBRATION.name)
        if args.no_calibrate:
            kind, entry = next(((k, v[row.name]) for k, v in cached.items() if row.name in v), (None, None))
            if entry is None:
                print(f"{row.name}: {schedule.iterations} iterations x ? s (no measurement; drop --no-calibrate)")
                continue
            measured = timing_of(entry, kind)
            timing = replace(
                measured,
                source=measured.source.replace(f"({kind})", f"on {kind}")
                + ("" if kind == key else f", not on this device ({key})"),
            )
        else:
            timing = calibrate(row, trainer, threads, store=args.root / locations.CALIBRATION.name)
        val_s = schedule.epochs * 200 * timing.s_per_val_episode  # the data's val_episodes, every epoch
        test_s = TEST_EPISODES * (1 + (5 if row.ensemble else 0)) * timing.s_per_val_episode
        total_h = (schedule.iterations * timing.s_per_iteration + val_s + test_s) / 3600
        print(
            f"{row.name}: {schedule.iterations} iterations x {timing.s_per_iteration:.3f} s/iteration "
            f"({timing.source}) + validation/test ≈ {total_h:.1f} h per seed x {args.seeds or row.seeds} seed(s)",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    run_as_module = Path(sys.argv[0]).name == "__main__.py"  # else bench/reproduce.py names itself
    parser = argparse.ArgumentParser(
        prog="python -m metaplus.reproduce" if run_as_module else None,
        description=metaplus.reproduce.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rows",
        default=None,
        help="a group (quick, cpu, time) or a comma list of row names (default: quick; with --report-only, every row)",
    )
    parser.add_argument(
        "--budget-min",
        type=float,
        default=None,
        help=f"training minutes per run (default: {QUICK_BUDGET_MIN:g} for quick, else 30)",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds 1..N for every row (default: the row's own; 1 for the quick group)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="runs at once, each with OMP_NUM_THREADS = cores / jobs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    parser.add_argument("--paper-budget", action="store_true", help="the papers' full budgets (meant for a GPU)")
    parser.add_argument(
        "--trainer",
        default=None,
        help="trainer config (default: gpu with --paper-budget when CUDA is available, else default)",
    )
    parser.add_argument(
        "--estimate-only", action="store_true", help="with --paper-budget: print the costs, run nothing"
    )
    parser.add_argument("--no-calibrate", action="store_true", help="estimates from cached measurements only")
    parser.add_argument(
        "--reuse-calibration",
        action="store_true",
        help="plan with the cached measurement of this device when there is one (default: measure "
        "again, since the s/iteration of a shared machine moves with its load)",
    )
    parser.add_argument("--report-only", action="store_true", help="re-render the JSON and markdown, run nothing")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="runs, calibrations and the report of these rows in this folder (default: the committed "
        f"reproduction, {relative(locations.RUNS)}, with {relative(locations.JSON_OUT)} and "
        f"{relative(locations.DOC_OUT)}; "
        f"for the quick group {relative(locations.QUICK_RUNS)})",
    )
    args = parser.parse_args(argv)
    if not (locations.REPO / "train.py").is_file():  # an installed copy: no train.py, conf/ or bench/results to use
        raise SystemExit(
            f"metaplus.reproduce trains and reports in a metaplus checkout; {locations.REPO} is not one "
            "(no train.py): run it from a clone (python -m metaplus.reproduce, or python bench/reproduce.py)"
        )
    if args.rows is None:
        args.rows = None if args.report_only else "quick"
    args.root = (args.out or (locations.QUICK_RUNS if args.rows == "quick" else locations.RUNS)).resolve()

    rows = select_rows(args.rows) if args.rows else list(ROWS.values())

    def report() -> dict:  # the committed table holds every row; another folder's, the rows it ran
        if args.root == locations.RUNS.resolve():
            return write_report(list(ROWS.values()), locations.RUNS, locations.JSON_OUT, locations.DOC_OUT)
        return write_report(rows, args.root, args.root / locations.JSON_OUT.name, args.root / locations.DOC_OUT.name)

    for row in rows:  # a time-to-accuracy row is defined by its training time: nothing may change it
        if row.budget_min and (args.paper_budget or args.budget_min not in (None, row.budget_min)):
            raise SystemExit(
                f"{row.name} always trains {row.budget_min:g} min (it measures {row.time_of} after "
                f"that time); drop --budget-min/--paper-budget or run {row.time_of} instead"
            )
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
        prepared = list(
            pool.map(lambda row: prepare_row(row, schedules[row.name], args, args.trainer, threads), pending)
        )
    jobs = [(row, seed, budget, plan) for row, (budget, plan) in zip(pending, prepared) for seed in seeds_of(row)]
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
