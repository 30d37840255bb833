"""Tables and a plot from the ``results.json`` files of a multirun (or of any tree of runs).

    python -m metaplus.report outputs/multiruns/2025-01-01_12-00-00       # report.md/.csv/.png there
    python -m metaplus.report 'outputs/multiruns/*' --out reports/compare --pivot data

Runs are grouped by the config keys that differ between them (seeds, paths and output folders
excluded), so one script writes both an ablation table (one row per variant, a column per switch) and
the algorithm comparison (one row per algorithm and dataset; ``--pivot data`` adds a
table with the datasets as columns). Per row: the test metric of the evaluated checkpoint ± its 95%
CI over the test episodes (both averaged over seeds), mean ± std over seeds when there are several,
the validation metric and the wall time. Accuracy is shown in %, MSE as is; the CSV keeps raw values.

*Switches* are boolean ``algo.*`` keys that an ablation turns on and off: each gets a column of its own
(✓ when on) where some run differs in it, and the ones that are on name a row when runs of one
algorithm differ in them. Which keys they are is the caller's to say (``switches=``, ``--switches``);
the command line's default is MAML++'s six (:data:`metaplus.mamlpp_switches.SWITCHES`).
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import glob
import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metaplus.mamlpp_switches import SWITCHES as MAMLPP_SWITCHES
from metaplus.results import portable_path

# Keys that differ between runs without making them different experiments.
IGNORED = (
    "seed",
    "*.seed",
    "paths.*",
    "ckpt_path",
    "*dirpath",
    "*save_dir",
    "*default_root_dir",
    "*output_dir",
    "*log_dir",
    "*cache_dir",
    "*root",
    "*root_dir",
    "logger.*.name",
    "tags",
    "train",
    "test",
)
MISSING = "—"  # a key the run's config does not have (e.g. algo.msl for Reptile)


# -- loading ---------------------------------------------------------------------------------------
@dataclass
class Run:
    path: Path  # the run's directory
    results: dict[str, Any]
    config: dict[str, Any]  # flattened: {"algo.inner_lr": 0.01, ...}

    @property
    def metric(self) -> str:
        """``acc`` or ``mse``: from the data config, else from whichever test metric was written."""
        task = self.config.get("data.task")
        if task in ("classification", "regression"):
            return "acc" if task == "classification" else "mse"
        return "mse" if "test/mse" in self.results else "acc"

    def value(self, key: str) -> float | None:
        value = self.results.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def natural_key(path: Path) -> list:
    """Sort ``10_x`` after ``2_x`` (Hydra numbers multirun jobs without padding)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(path))]


def find_results(sources: Sequence[str | Path]) -> list[Path]:
    """Every results.json under the given directories, files or glob patterns, in job order."""
    found: set[Path] = set()
    for source in sources:
        matches = glob.glob(str(source), recursive=True) if glob.has_magic(str(source)) else [str(source)]
        for match in map(Path, matches):
            if match.is_file() and match.name == "results.json":
                found.add(match.resolve())
            elif match.is_dir():
                found.update(p.resolve() for p in match.rglob("results.json"))
    return sorted(found, key=natural_key)


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(node, list):  # lists compare and print as one value
        return {prefix[:-1]: json.dumps(node)}
    return {prefix[:-1]: node}


def load_runs(paths: Iterable[Path]) -> list[Run]:
    runs = []
    for path in paths:
        results = json.loads(path.read_text())
        runs.append(Run(path.parent, results, flatten(results.get("config", {}))))
    return runs


# -- grouping --------------------------------------------------------------------------------------
def ignored(key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in IGNORED)


def setting(run: Run, key: str) -> str:
    """A config value as a comparable string (a missing key counts as a value of its own)."""
    return json.dumps(run.config.get(key, MISSING), default=str)


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value differs between runs."""
    keys = sorted({k for run in runs for k in run.config if not ignored(k)})
    return [k for k in keys if len({setting(run, k) for run in runs}) > 1]


def data_label(run: Run) -> str:
    c = run.config
    name = str(c.get("data.name", "?"))
    if run.metric == "acc" and "data.ways" in c and "data.shots" in c:
        return f"{name} {c['data.ways']}w{c['data.shots']}s"
    return f"{name} {c['data.shots']}-shot" if "data.shots" in c else name


def variant_label(run: Run, switches: Sequence[str], switches_name_rows: bool) -> str | None:
    """The ablation variant: ``variant`` from conf/ablation, else (when switches differ between
    runs) the algorithm plus the switches that are on, e.g. ``maml+msl+lslr``."""
    if run.config.get("variant"):
        return str(run.config["variant"])
    if switches_name_rows:
        on = [s for s in switches if run.config.get(f"algo.{s}") is True]
        return "+".join([str(run.config.get("algo.name", "?")), *on])
    return None


def switch_values(runs: Sequence[Run], switch: str) -> set:
    """The values a switch takes among the runs whose algorithm has it."""
    return {run.config[f"algo.{switch}"] for run in runs if f"algo.{switch}" in run.config}


def switches_differ(runs: Sequence[Run], switches: Sequence[str]) -> bool:
    """Some switch is on in one run and off in another: show the switch columns."""
    return any(len(switch_values(runs, s)) > 1 for s in switches)


def switches_vary_within_an_algorithm(runs: Sequence[Run], switches: Sequence[str]) -> bool:
    """Runs of one algorithm differ in their switches (an ablation without ``variant`` labels):
    then the switches that are on name the row. MAML vs MAML++ alone is told apart by the name."""
    by_algo: dict[Any, list[Run]] = {}
    for run in runs:
        by_algo.setdefault(run.config.get("algo.name"), []).append(run)
    return any(switches_differ(group, switches) for group in by_algo.values())


@dataclass
class Row:
    labels: dict[str, Any]  # column -> value, in display order
    runs: list[Run] = field(default_factory=list)
    switches: tuple[str, ...] = ()  # the label columns that are switches (shown as ✓)

    @property
    def metric(self) -> str:
        return self.runs[0].metric

    def values(self, key: str) -> list[float]:
        return [v for v in (run.value(key) for run in self.runs) if v is not None]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def stats(self) -> dict[str, Any]:
        m = self.metric
        test, ci, val = self.values(f"test/{m}"), self.values(f"test/{m}_ci95"), self.values(f"val/{m}")
        wall = self.values("wall_time_s")
        return {
            "metric": m,
            "test_mean": statistics.fmean(test) if test else None,
            "test_ci95": statistics.fmean(ci) if ci else None,
            "test_std_over_seeds": statistics.stdev(test) if len(test) > 1 else None,
            "runs": len(self.runs),
            "seeds": " ".join(str(run.results.get("seed")) for run in self.runs),
            "val_mean": statistics.fmean(val) if val else None,
            "wall_time_s": statistics.fmean(wall) if wall else None,
        }


def group_runs(runs: Sequence[Run], switches: Sequence[str] = ()) -> list[Row]:
    """One row per distinct setting, in the order the runs were found (the sweep's job order);
    ``switches``: the boolean ``algo.*`` keys shown as switch columns (see the module's docstring)."""
    varying = varying_keys(runs)
    name_rows = switches_vary_within_an_algorithm(runs, switches)
    identity = {
        run.path: (variant_label(run, switches, name_rows), run.config.get("algo.name"), data_label(run))
        for run in runs
    }
    shown = label_columns(runs, identity, varying, switches, switches_differ(runs, switches))
    rows: dict[tuple, Row] = {}
    for run in runs:
        key = tuple(setting(run, k) for k in varying)
        if key not in rows:
            rows[key] = Row(labels=labels_of(run, identity[run.path], shown, switches), switches=tuple(switches))
        rows[key].runs.append(run)
    return list(rows.values())


def label_columns(runs, identity, varying, switches: Sequence[str], show_switches: bool) -> list[str]:
    """The columns that tell rows apart: variant / algo / data where they differ, the switches when
    any differs, and any other differing key not already implied by those."""
    algos, datas = (len({ident[i] for ident in identity.values()}) > 1 for i in (1, 2))
    if any(ident[0] for ident in identity.values()):  # an ablation: the variant names the row
        columns = ["variant", *(["algo"] if algos else []), *(["data"] if datas else [])]
    else:
        columns = ["algo", "data"]
    if show_switches:
        columns += list(switches)
    implied = {"variant", "algo.name", "data.name", "data.ways", "data.shots", *(f"algo.{s}" for s in switches)}
    for key in varying:
        if key in implied:
            continue
        per_identity: dict[tuple, set] = {}
        for run in runs:
            per_identity.setdefault(identity[run.path], set()).add(setting(run, key))
        if any(len(values) > 1 for values in per_identity.values()):  # not explained by variant/algo/data
            columns.append(key)
    return columns


def labels_of(run: Run, ident: tuple, columns: list[str], switches: Sequence[str]) -> dict[str, Any]:
    variant, algo, data = ident
    named = {"variant": variant, "algo": algo, "data": data}
    out = {}
    for column in columns:
        if column in named:
            out[column] = named[column]
        elif column in switches:
            out[column] = run.config.get(f"algo.{column}", MISSING)
        else:
            out[column] = run.config.get(column, MISSING)
    return out


# -- formatting ------------------------------------------------------------------------------------
def scaled(value: float | None, metric: str) -> float | None:
    return None if value is None else value * 100 if metric == "acc" else value


def fmt(value: float | None, metric: str) -> str:
    value = scaled(value, metric)
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.2f}" if metric == "acc" else f"{value:.4g}"


def fmt_time(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def fmt_label(value: Any, column: str, switches: Sequence[str]) -> str:
    if column in switches:
        return "✓" if value is True else "" if value is False else str(value)
    return str(value)


def metric_header(rows: Sequence[Row], stage: str) -> str:
    metrics = {row.metric for row in rows}
    if metrics == {"acc"}:
        return f"{stage} acc (%)"
    return f"{stage} mse" if metrics == {"mse"} else f"{stage} metric (acc %, mse)"


def markdown_table(header: list[str], body: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
    return "\n".join(lines)


def extra_keys(runs: Sequence[Run], patterns: Sequence[str]) -> list[str]:
    """The results.json keys matching any of ``patterns`` (globs, e.g. ``mtnet/update_fraction/*``), in
    the order the runs wrote them; a pattern that matches nothing is an error, not a silent empty column."""
    keys: dict[str, None] = {}
    for pattern in patterns:
        matched = [
            k for run in runs for k in run.results if fnmatch.fnmatchcase(k, pattern) and run.value(k) is not None
        ]
        if not matched:
            numeric = sorted({k for run in runs for k in run.results if run.value(k) is not None})
            raise ValueError(
                f"--metrics {pattern!r} matches no numeric key of these results.json files "
                f"(they have: {', '.join(numeric)})"
            )
        keys.update(dict.fromkeys(matched))
    return list(keys)


def main_table(rows: Sequence[Row], extras: Sequence[str] = ()) -> str:
    columns = list(rows[0].labels)
    header = [
        *columns,
        f"{metric_header(rows, 'test')} ± CI95",
        "seeds",
        "mean ± std over seeds",
        metric_header(rows, "val"),
        "wall time",
        *extras,
    ]
    body = []
    for row in rows:
        s, m = row.stats(), row.metric
        over_seeds = f"{fmt(s['test_mean'], m)} ± {fmt(s['test_std_over_seeds'], m)}" if s["runs"] > 1 else "–"
        body.append(
            [
                *(fmt_label(row.labels[c], c, row.switches) for c in columns),
                f"{fmt(s['test_mean'], m)} ± {fmt(s['test_ci95'], m)}",
                str(s["runs"]),
                over_seeds,
                fmt(s["val_mean"], m),
                fmt_time(s["wall_time_s"]),
                *(fmt(row.mean(key), key) for key in extras),
            ]
        )
    return markdown_table(header, body)


def pivot_table(rows: Sequence[Row], pivot: str) -> str:
    """Rows = the other label columns, columns = the values of ``pivot`` (e.g. data)."""
    if pivot not in rows[0].labels:
        raise ValueError(f"--pivot {pivot}: not a column of this report (columns: {', '.join(rows[0].labels)})")
    others = [c for c in rows[0].labels if c != pivot]
    col_values = list(dict.fromkeys(str(row.labels[pivot]) for row in rows))
    cells: dict[str, dict[str, str]] = {}
    for row in rows:
        name = " / ".join(fmt_label(row.labels[c], c, row.switches) for c in others) or "all"
        s, m = row.stats(), row.metric
        cell = f"{fmt(s['test_mean'], m)} ± {fmt(s['test_ci95'], m)}"
        if s["runs"] > 1:
            cell += f" (σ {fmt(s['test_std_over_seeds'], m)}, n={s['runs']})"
        cells.setdefault(name, {})[str(row.labels[pivot])] = cell
    header = [" / ".join(others) or "", *col_values]
    body = [[name, *(by_col.get(v, "") for v in col_values)] for name, by_col in cells.items()]
    return markdown_table(header, body)


# -- writing ---------------------------------------------------------------------------------------
def write_csv(rows: Sequence[Row], path: Path, extras: Sequence[str] = ()) -> None:
    columns = list(rows[0].labels)
    stat_names = list(rows[0].stats())
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*columns, *stat_names, *extras, "run_dirs"])
        for row in rows:
            values = {**row.stats(), **{key: row.mean(key) for key in extras}}
            writer.writerow(
                [
                    *(row.labels[c] for c in columns),
                    *("" if values[k] is None else values[k] for k in (*stat_names, *extras)),
                    ";".join(portable_path(str(run.path)) for run in row.runs),
                ]
            )


def row_name(row: Row) -> str:
    """The bar's label: the row's non-switch labels (the variant names the switches)."""
    return " ".join(str(v) for c, v in row.labels.items() if c not in row.switches) or "run"


def write_plot(rows: Sequence[Row], path: Path, title: str) -> None:
    """Bars = test metric (mean over seeds), error bars = CI95 over test episodes, dots = seeds."""
    # A bare Figure draws to the file without pyplot: no global backend switch, so a notebook that calls
    # report() keeps showing its own plots inline.
    from matplotlib.figure import Figure

    metrics = list(dict.fromkeys(row.metric for row in rows))
    fig = Figure(figsize=(max(6.0, 0.7 * len(rows) + 2), 4.0 * len(metrics)))
    axes = fig.subplots(len(metrics), 1, squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics):
        mine = [row for row in rows if row.metric == metric]
        stats = [row.stats() for row in mine]
        x = list(range(len(mine)))
        means = [scaled(s["test_mean"], metric) or 0.0 for s in stats]
        cis = [scaled(s["test_ci95"], metric) or 0.0 for s in stats]
        ax.bar(x, means, yerr=cis, capsize=4, color="#4C72B0", alpha=0.85)
        for i, row in enumerate(mine):
            seeds = [scaled(v, metric) for v in row.values(f"test/{metric}")]
            if len(seeds) > 1:
                ax.plot([i] * len(seeds), seeds, "o", color="black", markersize=3)
        ax.set_xticks(x, [row_name(row) for row in mine], rotation=30, ha="right")
        ax.set_ylabel("test accuracy (%)" if metric == "acc" else "test MSE")
        if metric == "acc" and means:
            low = min(m - c for m, c in zip(means, cis))
            ax.set_ylim(max(0.0, low - 0.1 * (100 - low) - 1), min(100.0, max(m + c for m, c in zip(means, cis)) + 1))
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def default_out(sources: Sequence[str | Path], found: Sequence[Path]) -> Path:
    """The directory given, else the deepest folder holding every run found."""
    if len(sources) == 1 and Path(sources[0]).is_dir():
        return Path(sources[0])
    return Path(os.path.commonpath([str(p.parent) for p in found]))


def checked_switches(runs: Sequence[Run], switches: Sequence[str]) -> tuple[str, ...]:
    """``switches`` as given, each a true/false ``algo.<name>`` key of some run: a misspelt name is an
    error, not a column that silently never appears."""
    flags = sorted(
        {
            k.removeprefix("algo.")
            for run in runs
            for k, v in run.config.items()
            if k.startswith("algo.") and isinstance(v, bool)
        }
    )
    for name in switches:
        if name not in flags:
            raise ValueError(
                f"--switches {name}: no run has a true/false algo.{name} (their true/false algo keys: "
                f"{', '.join(flags) or 'none'})"
            )
    return tuple(switches)


def report(
    sources: Sequence[str | Path],
    out: str | Path | None = None,
    pivot: str | None = None,
    title: str | None = None,
    metrics: Sequence[str] = (),
    switches: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write report.md, report.csv and report.png (and the pivot table inside report.md); return their paths.
    ``metrics``: globs of further results.json keys to show as columns (mean over seeds). ``switches``: the
    true/false ``algo.*`` keys an ablation turns on and off, each checked to exist in some run; None: MAML++'s
    six, where the runs have them."""
    found = find_results(sources)
    if not found:
        raise FileNotFoundError(
            f"no results.json under {', '.join(map(str, sources))} (runs write it when they "
            f"finish; a failed or unfinished run has none)"
        )
    runs = load_runs(found)
    rows = group_runs(runs, MAMLPP_SWITCHES if switches is None else checked_switches(runs, switches))
    extras = extra_keys(runs, metrics)
    out_dir = Path(out) if out is not None else default_out(sources, found)
    out_dir.mkdir(parents=True, exist_ok=True)
    title = title or out_dir.resolve().name
    paths = {"md": out_dir / "report.md", "csv": out_dir / "report.csv", "png": out_dir / "report.png"}
    write_csv(rows, paths["csv"], extras)
    write_plot(rows, paths["png"], title)
    parts = [
        f"# {title}",
        "",
        f"{len(runs)} runs, {len(rows)} rows, from {', '.join(portable_path(str(s)) for s in sources)}. "
        "Test metric of the evaluated checkpoint on the fixed test episodes, ± 95% CI over episodes "
        "(1.96·std/√n), both averaged over seeds; `mean ± std over seeds` is given when a row has "
        "several seeds (sample std).",
        "",
        main_table(rows, extras),
        "",
    ]
    if pivot:
        parts += [f"## By {pivot}", "", pivot_table(rows, pivot), ""]
    parts += [f"![test metric per row, CI95 error bars]({paths['png'].name})", ""]
    paths["md"].write_text("\n".join(parts))
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m metaplus.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "sources",
        nargs="+",
        help="multirun directories, run directories, results.json files or glob patterns (quote them)",
    )
    parser.add_argument("--out", help="output directory (default: the directory given, else the common parent)")
    parser.add_argument("--pivot", help="also write a table with this column's values as columns (e.g. data)")
    parser.add_argument("--title", help="report title (default: the output directory's name)")
    parser.add_argument(
        "--metrics",
        nargs="+",
        default=[],
        metavar="GLOB",
        help="further results.json keys to show as columns, mean over seeds "
        "(e.g. 'mtnet/update_fraction/*' 'test/acc_step*')",
    )
    parser.add_argument(
        "--switches",
        nargs="*",
        default=None,
        metavar="NAME",
        help="the true/false algo.* keys an ablation turns on and off: a column each where runs "
        f"differ (default: MAML++'s {' '.join(MAMLPP_SWITCHES)}; --switches alone: none)",
    )
    args = parser.parse_args(argv)
    try:
        paths = report(args.sources, args.out, args.pivot, args.title, args.metrics, args.switches)
    except ValueError as error:
        parser.error(str(error))
    print(paths["md"].read_text())
    print("written: " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
