"""The registry of published rows, read from rows/*.yaml: one file per paper (each row's value and where
it is written down) and rows/table.yaml (the table's order, time-to-accuracy runs, groups, targets)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

ROWS_DIR = Path(__file__).resolve().parent / "rows"
TABLE_FILE = "table.yaml"


class RegistryError(ValueError):
    """A row file that cannot be read as the registry: names the file, the row and the key."""


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
    metric: str  # "acc", "mse" or "update_fraction" (a recorded claim)
    paper: float | None
    paper_ci: float | None
    paper_iterations: int
    preset: str  # the preset (and row) the composition must name
    source: str  # where the paper number is written down
    seeds: int = 1
    ensemble: bool = False  # the protocol reports the top-k checkpoint ensemble (MAML++)
    # Inner steps at test behind the paper's figure when they differ from the preset's test_inner_steps
    # (the Meta-SGD paper's sinusoid table adapts in one step): that step of the test curve is compared.
    paper_test_steps: int | None = None
    note: str = ""
    recorded: str | None = None  # a row taken from an existing benchmark instead of run here
    command: str | None = None  # the command behind a recorded row
    # A time-to-accuracy run (TIME_ROWS): the table row it measures, always trained for budget_min minutes.
    time_of: str | None = None
    budget_min: float | None = None
    # The parity comparison (bench/parity.py, metaplus.benchmarking.parity) that trains this row's setting
    # beside the authors' or a widely used reference code at equal meta-iterations.
    parity: str | None = None

    @property
    def overrides(self) -> list[str]:
        pair = [f"algo={self.algo}", f"data={self.data}"]
        if self.ways is not None:
            pair.append(f"data.ways={self.ways}")
        return [*pair, f"data.shots={self.shots}"]

    @property
    def label(self) -> str:
        return f"{self.ways}w{self.shots}s" if self.ways else f"{self.shots}-shot"


FIELDS = {f.name: f for f in dataclasses.fields(Row)}
REQUIRED = {
    name for name, f in FIELDS.items() if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
} - {"name"}
METRICS = ("acc", "mse", "update_fraction")
TABLE_KEYS = {"order", "time_rows", "groups", "group_seeds", "time_to_accuracy", "accuracy_targets"}


def _mapping(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise RegistryError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _row(name: str, values: Any, where: str) -> Row:
    values = _mapping(values, f"{where}: {name}")
    unknown = sorted(set(values) - set(FIELDS) - {"name"})
    if unknown:
        raise RegistryError(f"{where}: {name}: unknown key(s) {unknown}; allowed: {sorted(set(FIELDS) - {'name'})}")
    missing = sorted(REQUIRED - set(values))
    if missing:
        raise RegistryError(f"{where}: {name}: missing key(s) {missing}")
    if values["metric"] not in METRICS:
        raise RegistryError(f"{where}: {name}.metric={values['metric']!r} is invalid: must be one of {list(METRICS)}")
    return Row(name=name, **values)


def load_registry(folder: Path = ROWS_DIR) -> tuple[dict[str, Row], dict[str, Row], dict[str, Any]]:
    """(rows in the table's order, time rows, the rest of table.yaml), every name checked."""
    papers: dict[str, Row] = {}
    for path in sorted(folder.glob("*.yaml")):
        if path.name == TABLE_FILE:
            continue
        where = f"{folder.name}/{path.name}"
        document = _mapping(yaml.safe_load(path.read_text(encoding="utf-8")), where)
        if set(document) != {"publication", "rows"}:
            raise RegistryError(f"{where}: keys {sorted(document)}; a paper's file holds 'publication' and 'rows'")
        for name, values in _mapping(document["rows"], f"{where}: rows").items():
            if name in papers:
                raise RegistryError(f"{where}: row {name!r} is defined twice")
            papers[name] = _row(name, values, where)
    where = f"{folder.name}/{TABLE_FILE}"
    table = _mapping(yaml.safe_load((folder / TABLE_FILE).read_text(encoding="utf-8")), where)
    if set(table) != TABLE_KEYS:
        raise RegistryError(f"{where}: keys {sorted(table)}; expected {sorted(TABLE_KEYS)}")
    order = list(table["order"])
    if sorted(order) != sorted(papers) or len(set(order)) != len(order):
        raise RegistryError(
            f"{where}: order must list every row of the papers' files once; not listed: "
            f"{sorted(set(papers) - set(order))}, unknown or repeated: "
            f"{sorted({n for n in order if n not in papers or order.count(n) > 1})}"
        )
    rows = {name: papers[name] for name in order}
    time_rows = {}
    for name, values in _mapping(table["time_rows"], f"{where}: time_rows").items():
        values = _mapping(values, f"{where}: time_rows.{name}")
        if set(values) != {"time_of", "budget_min", "seeds"} or values["time_of"] not in rows:
            raise RegistryError(
                f"{where}: time_rows.{name} needs time_of (one of the rows), budget_min and seeds; got {values}"
            )
        time_rows[name] = replace(rows[values["time_of"]], name=name, **values)
    for group, names in _mapping(table["groups"], f"{where}: groups").items():
        unknown = [n for n in names if n not in rows and n not in time_rows]
        if unknown or group in ("cpu", "time"):
            raise RegistryError(f"{where}: groups.{group}: unknown rows {unknown} (or a reserved name: cpu, time)")
    for name, *_ in [*table["time_to_accuracy"], *table["accuracy_targets"]]:
        if name not in rows:
            raise RegistryError(f"{where}: time_to_accuracy/accuracy_targets name {name!r}, not a row")
    return rows, time_rows, table


ROWS, TIME_ROWS, _TABLE = load_registry()
GROUPS: dict[str, list[str]] = {**_TABLE["groups"], "cpu": list(ROWS), "time": list(TIME_ROWS)}
GROUP_SEEDS: dict[str, int] = dict(_TABLE["group_seeds"])
# Time-to-accuracy: (row, minutes of training), from the row's runs and its TIME_ROWS runs.
TIME_TO_ACCURACY: list[tuple[str, int]] = [tuple(entry) for entry in _TABLE["time_to_accuracy"]]
# Targets set for this machine (issue 12): (row, minutes of training, test accuracy).
ACCURACY_TARGETS: list[tuple[str, int, float]] = [tuple(entry) for entry in _TABLE["accuracy_targets"]]


def select_rows(spec: str) -> list[Row]:
    names: list[str] = []
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        if part in GROUPS:
            names += GROUPS[part]
        elif part in ROWS or part in TIME_ROWS:
            names.append(part)
        else:
            raise SystemExit(
                f"--rows: unknown row or group {part!r}; groups: {', '.join(GROUPS)}; "
                f"rows: {', '.join([*ROWS, *TIME_ROWS])}"
            )
    return [ROWS.get(n) or TIME_ROWS[n] for n in dict.fromkeys(names)]
