"""Notebooks are executed top to bottom in fast mode (METAPLUS_NOTEBOOK_FAST=1: tiny runs trained in the
kernel instead of the committed bench runs); a failing cell fails the test.

Each notebook must render its plots (image outputs) and the numbers it prints must be the computed ones:
a check cell, appended here and run in the notebook's kernel after its last cell, recomputes them
independently (plain formulas from the notebook's models, checkpoints or results.json) and prints them
as JSON {regex with one number group: value}; every regex must match the notebook's printed text with
that value (to the printed precision).
"""

import json
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell

from metaplus.testing import REPO

NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
FAST = "METAPLUS_NOTEBOOK_FAST"
RUNS = REPO / "bench" / "results" / "notebook_runs"
# Notebooks that load bench/notebook_runs.py's runs in full mode (quickstart trains its own short run).
FULL_MODE = ["learners_compared.ipynb", "maml_basics.ipynb", "mamlpp_ablation.ipynb", "mtnet_masks.ipynb"]

# Per notebook: the check cell's code and the number of plots (image outputs) it must render.
CHECKS = {
    "quickstart.ipynb": (
        1,
        r"""
import json
saved = json.loads((Path(cfg.paths.output_dir) / "results.json").read_text())["test/mse_by_step"]
print(json.dumps({r"test MSE before adaptation (\S+),": saved[0], r"after \d+ steps (\S+)": saved[-1]}))
""",
    ),
    "maml_basics.ipynb": (
        1,
        r"""
import json
check = {}
for name, learner in (("MAML", maml), ("pre-training", pretrained)):
    for steps in (0, 1, 10):
        model = learner.adapt(task, steps, first_order=True) if steps else learner.backbone
        prediction = model(x_grid, step=max(steps - 1, 0)).detach().double().numpy().ravel()
        target = (amplitude * torch.sin(x_grid.double() - phase)).numpy().ravel()
        check[rf"{name}, +{steps} steps: MSE on the grid (\S+)"] = float(((prediction - target) ** 2).mean())
for name, job in (("MAML", "maml"), ("pre-training", "pretrain")):  # the per-step table is the runs' results.json
    saved = json.loads((runs / job / "results.json").read_text())
    for k in (1, 10):
        check[rf"step {k:2d}: .*?{name} (\S+) ± "] = saved["test/mse_by_step"][k]
        check[rf"step {k:2d}: .*?{name} \S+ ± (\S+)"] = saved["test/mse_ci95_by_step"][k]
print(json.dumps(check))
""",
    ),
    "learners_compared.ipynb": (
        2,
        r'''
import json, math
import numpy as np

def hsic_cka(a, b):
    """CKA in its kernel form, HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with linear Gram matrices."""
    n = a.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = h @ (a @ a.T) @ h, h @ (b @ b.T) @ h
    return float((k * l).sum() / math.sqrt((k * k).sum() * (l * l).sum()))

check = {}
learner = learners["MAML"]
test_set = EpisodeDataset(parts["datamodule"].source("test"), 25, keys=(0, "test"))
errors = []
for i in range(25):
    t = test_set[i][1]
    adapted = learner.adapt(t, 5, first_order=True)
    errors.append(float(((adapted(t.query_x, step=4).detach().double() - t.query_y.double()) ** 2).mean()))
mean = sum(errors) / 25
check[r"MAML: test MSE (\S+) ±"] = mean
check[r"MAML: test MSE \S+ ± (\S+)"] = 1.96 * float(np.std(errors)) / math.sqrt(25)
values = []
for t in episodes:
    acts = {}
    for tag, model in (("before", learner.backbone), ("after", learner.adapt(t, 5, first_order=True))):
        out = []
        handle = model.head.register_forward_hook(lambda m, i, o: out.append(o.detach().double().numpy()))
        model(t.query_x, step=0 if tag == "before" else 4)
        handle.remove()
        acts[tag] = out[-1]
    values.append(hsic_cka(acts["before"], acts["after"]))
check[r"MAML: CKA body.1 \S+, CKA body.3 \S+, CKA head (\S+)"] = sum(values) / len(values)
print(json.dumps(check))
''',
    ),
    "mamlpp_ablation.ipynb": (
        3,
        r"""
import json
state = torch.load(metrics["mamlpp"]["best_checkpoint"], weights_only=False)["state_dict"]
rows = [v.double() for k, v in state.items() if k.startswith("inner_lrs.")]
check = {rf"step {k + 1}: mean learned inner lr (\S+)": float(sum(r[k] for r in rows) / len(rows)) for k in range(3)}
check[r"weights at epoch 0: \[(\S+),"] = 1 / 5  # MAML++ starts MSL with equal weights 1/N
saved = json.loads((sweep / "2_mamlpp" / "results.json").read_text())
check[r"\| mamlpp \|[^\n]*?\| ([\d.]+) ± "] = saved["test/mse"]  # the report's row of the MAML++ job
print(json.dumps(check))
""",
    ),
    "mtnet_masks.ipynb": (
        1,
        r"""
import json
check = {}
for order, entry in fractions.items():
    state = torch.load(entry["checkpoint"], weights_only=False)["state_dict"]
    logits = {k[len("mask_logits."):].replace("__", "."): v for k, v in state.items() if k.startswith("mask_logits.")}
    for layer, value in logits.items():
        check[rf"order {order}: .*{re.escape(layer)} (\S+)"] = float(torch.sigmoid(value.double()).mean())
print(json.dumps(check))
""",
    ),
}


def printed_text(notebook) -> str:
    return "".join(
        o.get("text", "")
        for cell in notebook.cells
        for o in cell.get("outputs", [])
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_renders_plots_and_prints_computed_numbers(path: Path, monkeypatch):
    monkeypatch.setenv(FAST, "1")  # the kernel inherits it: tiny runs, not the committed bench runs
    notebook = nbformat.read(path, as_version=4)
    images, check = CHECKS[path.name]
    notebook.cells.append(new_code_cell("import re\n" + check))
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    errors = [o for cell in notebook.cells for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, "\n".join(e["ename"] + ": " + e["evalue"] for e in errors)
    rendered = sum("image/png" in o.get("data", {}) for cell in notebook.cells for o in cell.get("outputs", []))
    assert rendered >= images, f"{path.name} rendered {rendered} plots, expected {images}"

    check_output = "".join(
        o.get("text", "")
        for o in notebook.cells[-1].outputs
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )
    assert check_output.strip(), f"{path.name}: the check cell printed nothing: {notebook.cells[-1].outputs}"
    expected = json.loads(check_output.strip().splitlines()[-1])
    notebook.cells.pop()
    text = printed_text(notebook)
    for pattern, value in expected.items():
        match = re.search(pattern, text)
        assert match, f"{path.name}: nothing printed matches {pattern!r}"
        shown = match.group(1).rstrip(",")
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        assert float(shown) == pytest.approx(value, abs=0.6 * 10**-decimals + 1e-9), (pattern, shown, value)


def test_committed_notebooks_keep_their_outputs_and_plots():
    """What the repository's page shows: every notebook is stored executed, with its figures, or (runs not
    trained yet) saying so."""
    for path in NOTEBOOKS:
        notebook = nbformat.read(path, as_version=4)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(c.get("execution_count") for c in code), f"{path.name} is stored unexecuted"
        assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs) or "NOT PRESENT" in printed_text(
            notebook
        ), f"{path.name}: no figure and no word on the missing runs"
        assert "Agg" not in "".join(c.source for c in code), f"{path.name} forces a non-interactive backend"


@pytest.mark.parametrize("name", FULL_MODE)
def test_committed_notebooks_are_the_full_mode_runs(name):
    """The stored outputs come from the committed bench runs, not from the tests' tiny fast-mode runs."""
    notebook = nbformat.read(REPO / "notebooks" / name, as_version=4)
    text = printed_text(notebook)
    assert "mode: full" in text and "mode: fast" not in text, f"{name} is stored from a fast-mode (tiny) execution"
    source = "".join(c.source for c in notebook.cells if c.cell_type == "code")
    assert FAST in source, f"{name} has no fast mode for the tests"


def test_maml_basics_stored_outputs_are_the_committed_runs_numbers():
    """maml_basics' stored per-step table is the committed runs' results.json, at the budget its text states."""
    text = printed_text(nbformat.read(REPO / "notebooks" / "maml_basics.ipynb", as_version=4))
    for name, job in (("MAML", "maml"), ("pre-training", "pretrain")):
        saved = json.loads((RUNS / "maml_basics" / job / "results.json").read_text())
        assert saved["best_checkpoint"] and (RUNS / "maml_basics" / job / saved["best_checkpoint"]).is_file()
        assert saved["test/episodes"] == 600
        for k in (0, 1, 10):
            match = re.search(rf"step {k:2d}: .*?{name} (\S+) ± (\S+)", text)
            assert match, f"no stored step-{k} number for {name}"
            assert float(match.group(1)) == pytest.approx(saved["test/mse_by_step"][k], abs=6e-4)
            assert float(match.group(2)) == pytest.approx(saved["test/mse_ci95_by_step"][k], abs=6e-4)
