"""The reproduction record: each row's figures over its seeds against the paper's, time to accuracy, the
targets and what limits them (reproduction.json)."""

from __future__ import annotations

import csv
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from metaplus.reproduce import locations
from metaplus.reproduce.calibration import load_calibration
from metaplus.reproduce.locations import relative
from metaplus.reproduce.planner import (
    DEFAULT_BUDGET_MIN,
    MAX_VALIDATIONS,
    MIN_VAL_EPISODES,
    MIN_VALIDATIONS,
    PLAN_SHARE,
    TEST_EPISODES,
    VAL_EPISODES,
    VAL_SHARE,
)
from metaplus.reproduce.records import load_summaries
from metaplus.reproduce.registry import ACCURACY_TARGETS, ROWS, TIME_ROWS, TIME_TO_ACCURACY, Row


def threads_of(summaries: Sequence[dict]) -> int | None:
    """The torch threads the runs used, when they all used the same (the plan depends on it)."""
    threads = {s.get("threads") for s in summaries}
    return threads.pop() if len(threads) == 1 and None not in threads else None


def command_for(row: Row, budget_min: float | None, seeds: int | None = None, threads: int | None = None) -> str:
    if row.recorded:
        return row.command
    budget = f"--budget-min {budget_min:g}" if budget_min else "--paper-budget"
    return f"python bench/reproduce.py --rows {row.name} {budget} --seeds {seeds or row.seeds}" + (
        f" --threads {threads}" if threads else ""
    )


def time_command(name: str, minutes: float, threads: int | None = None) -> str:
    """The command behind a time-to-accuracy point: its time row's where one trains that long, else the
    table row's at that budget (the table row's own command never names a time row)."""
    timed = next((t for t in TIME_ROWS.values() if t.time_of == name and t.budget_min == minutes), None)
    if timed is not None:
        return f"python bench/reproduce.py --rows {timed.name} --seeds {timed.seeds}" + (
            f" --threads {threads}" if threads else ""
        )
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


def row_record(row: Row, summaries: list[dict], root: Path = locations.RUNS) -> dict:
    record: dict[str, Any] = {
        "row": row.name,
        "algo": row.algo,
        "data": row.data,
        "ways": row.ways,
        "shots": row.shots,
        "metric": row.metric,
        "paper": row.paper,
        "paper_ci95": row.paper_ci,
        "paper_source": row.source,
        "paper_iterations": row.paper_iterations,
        "preset": row.preset,
        "note": row.note or None,
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
        points = [
            ((s.get("test_by_step") or [])[k : k + 1], (s.get("test_ci95_by_step") or [])[k : k + 1]) for s in summaries
        ]
        if all(value and ci for value, ci in points):
            step_mean, step_std = mean_std([value[0] for value, _ in points])
            at_steps = {
                "steps": k,
                "ours": step_mean,
                "ours_std_over_seeds": step_std,
                "ours_ci95": statistics.fmean(ci[0] for _, ci in points),
            }
    ensemble = [s["test_ensemble"] for s in summaries if s.get("test_ensemble") is not None]
    ensemble_mean, ensemble_std = mean_std(ensemble)
    ensemble_ci = (
        statistics.fmean(s["test_ensemble_ci95"] for s in summaries if s.get("test_ensemble_ci95") is not None)
        if ensemble
        else None
    )
    # The paper's protocol decides which figure is compared: MAML++ reports its top-k ensemble.
    compared = ensemble_mean if (row.ensemble and ensemble_mean is not None) else mean
    if row.paper_test_steps is not None:
        compared = at_steps["ours"] if at_steps else None
    iterations = [s["global_step"] for s in summaries]
    budgets = [s["plan"]["budget_min"] for s in summaries if s.get("plan") and s["plan"].get("budget_min")]
    presets = {(s.get("preset") or {}).get("name") for s in summaries}
    record.update(
        {
            "status": "run",
            "ours": mean,
            "ours_ci95": statistics.fmean(cis),
            "ours_std_over_seeds": std,
            "ours_ensemble": ensemble_mean,
            "ours_ensemble_ci95": ensemble_ci,
            "ours_ensemble_std_over_seeds": ensemble_std,
            "compared": (
                "ensemble"
                if compared is ensemble_mean and row.ensemble
                else f"best checkpoint after {row.paper_test_steps} inner step(s)"
                if row.paper_test_steps is not None
                else "best checkpoint"
            ),
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
        }
    )
    return record


def recorded_mtnet(row: Row) -> dict:
    """The MT-net polynomial row from bench/results/mtnet_polynomial_60k (update fractions at the end)."""
    folder = locations.RESULTS / row.recorded
    table = folder / "update_fraction.md"
    if not table.is_file():
        return {"status": "not run", "command": row.command}
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
    return {
        "status": "recorded",
        "source_results": f"bench/results/{row.recorded}",
        "update_fraction_by_order": {str(o): fractions[o] for o in orders},
        "test_mse_by_order": {str(o): {"mean": m, "ci95": c} for o, (m, c) in sorted(mse.items())},
        "iterations_per_seed": [steps[o] for o in orders],
        "seeds": [42],
        "iterations_fraction_of_paper": statistics.fmean(steps.values()) / row.paper_iterations,
        "derivative_order": "second",
        "reproduced": grows,
        "command": row.command,
    }


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
            entry.update(
                {
                    "test_acc": statistics.fmean(tests),
                    "seeds": len(tests),
                    "method": ", ".join(sorted(methods)),
                    "trained_min": statistics.fmean(trained) if trained else None,
                    "status": "run",
                }
            )
        else:
            longest = max((s["curve"][-1][0] / 60 for s in seeds if s.get("curve")), default=None)
            entry.update(
                {
                    "status": "not reached" if seeds else "not run",
                    "longest_train_min": longest,
                    "command": time_command(name, minutes),
                }
            )
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
            s_per_it = statistics.fmean(
                s["train_s"] / s["global_step"] for s in behind if (s.get("threads") or 0) == most
            )
            by_run: dict[str, list[dict]] = {}
            for s in tested:
                by_run.setdefault(s.get("row") or name, []).append(s)
            entry.update(
                {
                    "s_per_iteration": s_per_it,
                    "threads": max(s.get("threads") or 0 for s in behind) or None,
                    "iterations_in_budget": minutes * 60 / s_per_it,
                    "iterations_trained": statistics.fmean(
                        s["global_step"] for s in behind if (s.get("threads") or 0) == most
                    ),
                    "train_min": statistics.fmean(s["train_s"] for s in behind if (s.get("threads") or 0) == most) / 60,
                    "accuracy_by_iterations": sorted(
                        (
                            {
                                "run": run,
                                "iterations": statistics.fmean(s["global_step"] for s in group),
                                "test_acc": statistics.fmean(s["test"] for s in group),
                                "seeds": len(group),
                                "threads": max(s.get("threads") or 0 for s in group) or None,
                            }
                            for run, group in by_run.items()
                        ),
                        key=lambda point: point["iterations"],
                    ),
                    "paper_iterations": ROWS[name].paper_iterations,
                    "paper": ROWS[name].paper,
                    "hours_for_paper_iterations": ROWS[name].paper_iterations * s_per_it / 3600,
                }
            )
        out.append(entry)
    return out


def parity_record(row: Row, parity_json: Path | None = None) -> dict | None:
    """What the row's parity comparison (bench/parity.py) found at equal meta-iterations: its verdict
    and the metaplus - reference difference at the last iteration both codes were validated at, with
    its 95 % CI. None for a row without a comparison; ``verdict`` None while the comparison has not run."""
    if row.parity is None:
        return None
    import json

    path = parity_json or locations.PARITY_JSON
    comparisons = json.loads(path.read_text())["comparisons"] if path.is_file() else {}
    found = comparisons.get(row.parity)
    if found is None:
        return {"comparison": row.parity, "verdict": None}
    last = (found.get("difference") or [None])[-1]
    record: dict[str, Any] = {"comparison": row.parity, "verdict": (found.get("verdict") or {}).get("parity")}
    if last is not None:
        record.update(
            iteration=last["iteration"],
            seeds=min(last["seeds"].values()),
            difference=last["difference"],
            ci_low=last["ci_low"],
            ci_high=last["ci_high"],
        )
    return record


def build_report(rows: Iterable[Row], root: Path = locations.RUNS) -> dict:
    rows = list(rows)
    summaries = {row.name: load_summaries(row, root) for row in rows}
    records = {row.name: row_record(row, summaries[row.name], root) for row in rows}
    for row in rows:
        records[row.name]["parity"] = parity_record(row)
    # time to accuracy of the table's rows only (a small table, such as the quick group's, stays small)
    named = {row.name for row in rows}
    all_summaries = {
        name: [
            s
            for row in [ROWS[name], *(t for t in TIME_ROWS.values() if t.time_of == name)]
            for s in load_summaries(row, root)
        ]
        for name, _ in TIME_TO_ACCURACY
        if name in named
    }
    times = [t for t in time_to_accuracy(all_summaries) if t["row"] in named]
    time_runs = [
        {
            "row": t.name,
            "time_of": t.time_of,
            "minutes": t.budget_min,
            "command": time_command(t.time_of, t.budget_min, threads_of(load_summaries(t, root))),
        }
        for t in TIME_ROWS.values()
        if t.time_of in named
    ]
    # A table kept in another folder (the quick group's, --out) regenerates there, never into the committed runs.
    # Outside the repository the folder is this machine's own path, which a report never embeds.
    folder = relative(root)
    if root.resolve() == locations.RUNS.resolve():
        out = ""
    else:
        out = " --out " + ("<the folder of this table>" if Path(folder).is_absolute() else folder)
    recorded = [row.command for row in ROWS.values() if row.recorded]
    for entry in [*records.values(), *times, *time_runs]:
        if out and entry.get("command") not in (None, *recorded):  # those name their own folders
            entry["command"] += out
    rerender = (
        "python bench/reproduce.py --report-only"
        if not out
        else f"python bench/reproduce.py --rows {','.join(row.name for row in rows)}{out} --report-only"
    )
    return {
        "rows": list(records.values()),
        "time_to_accuracy": times,
        "time_runs": time_runs,
        "rerender": rerender,
        "targets": [t for t in target_limits(all_summaries, times) if t["row"] in named],
        "calibration": load_calibration(root / locations.CALIBRATION.name),
        "protocol": {
            "test_episodes": TEST_EPISODES,
            "val_episodes": VAL_EPISODES,
            "min_val_episodes": MIN_VAL_EPISODES,
            "min_validations": MIN_VALIDATIONS,
            "max_validations": MAX_VALIDATIONS,
            "val_share": VAL_SHARE,
            "plan_share": PLAN_SHARE,
            "ci": "1.96 * std / sqrt(episodes), mean over seeds of each seed's CI",
        },
    }
