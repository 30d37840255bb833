"""Per-seed records: each finished run summarised into summary.json (committed, without the machine's paths),
which is all the report is rebuilt from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from metaplus.reproduce import locations  # locations.RUNS read at call time
from metaplus.reproduce.phases import derivative_order
from metaplus.reproduce.registry import Row


def training_curve(directory: Path, metric: str) -> list[tuple[float, float]]:
    """(training seconds, validation metric) at every validation, over the run and its resumptions."""
    points: dict[float, float] = {}
    for metrics_csv in sorted((directory / "csv").glob("metrics*.csv")):
        points.update(dict(validation_curve(metrics_csv, metric)))
    return sorted(points.items())


def validation_curve(metrics_csv: Path, metric: str = "acc") -> list[tuple[float, float]]:
    """(training seconds, ``val/<metric>``) at every validation of one metrics.csv, joined on the epoch:
    Lightning's CSV logger writes the two on separate lines."""
    with metrics_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    seconds = {r["epoch"]: float(r["time/train_s"]) for r in rows if r.get("time/train_s")}
    values = {r["epoch"]: float(r[f"val/{metric}"]) for r in rows if r.get(f"val/{metric}")}
    return [(seconds[e], values[e]) for e in sorted(seconds, key=float) if e in values]


def write_summary(directory: Path, row: Row) -> dict:
    """The seed's figures without the machine's paths: committed, and enough to re-render the report."""
    results = json.loads((directory / "results.json").read_text())
    metric = "mse" if row.metric == "mse" else "acc"
    plan = json.loads((directory / "plan.json").read_text()) if (directory / "plan.json").is_file() else {}
    summary = {
        "row": row.name,
        "seed": results["seed"],
        "metric": metric,
        "test": results[f"test/{metric}"],
        "test_ci95": results[f"test/{metric}_ci95"],
        "test_episodes": results.get("test/episodes"),
        "test_by_step": results.get(f"test/{metric}_by_step"),
        "test_ci95_by_step": results.get(f"test/{metric}_ci95_by_step"),
        "val": results.get(f"val/{metric}"),
        "test_ensemble": results.get(f"test/{metric}_ensemble"),
        "test_ensemble_ci95": results.get(f"test/{metric}_ensemble_ci95"),
        "global_step": results["global_step"],
        "epochs": results.get("epochs"),
        "wall_time_s": results["wall_time_s"],
        "train_s": (training_curve(directory, metric) or [(None, None)])[-1][0],
        "preset": results.get("preset"),
        "derivative_order": derivative_order_of(results.get("config", {}).get("algo", {})),
        "overrides": plan.get("overrides"),
        "threads": plan.get("threads"),
        "plan": plan.get("plan"),
        "curve": training_curve(directory, metric),
    }
    (directory / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def derivative_order_of(algo: dict) -> str | None:
    if not algo:
        return None
    from omegaconf import OmegaConf

    return derivative_order(OmegaConf.create(algo))


def load_summaries(row: Row, root: Path = locations.RUNS) -> list[dict]:
    summaries = []
    for directory in sorted((root / row.name).glob("seed*")):
        if (directory / "summary.json").is_file():
            summaries.append(json.loads((directory / "summary.json").read_text()))
        elif (directory / "results.json").is_file():
            summaries.append(write_summary(directory, row))
    return sorted(summaries, key=lambda s: s["seed"])
