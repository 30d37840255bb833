"""The W&B dashboard of a run, read back from the offline run's own files (never a mocked W&B).

The ``.wandb`` transaction log is decoded with W&B's protobuf schema (``metaplus.testing.wandb_records``); the
tables W&B wrote for the plots are read from the run's ``files/`` directory.
"""

import json
import time

import pytest
import torch

from metaplus.loggers import dashboard
from metaplus.run import run
from metaplus.testing import QUICK, wandb_records


def offline_run_records(out, expected_keys, timeout=60):
    """Records of the single offline run under ``out``, once W&B's service has flushed ``expected_keys``."""
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    log = next(runs[0].glob("*.wandb"))
    deadline = time.time() + timeout
    while True:
        records = wandb_records(log)
        history: dict = {}  # nested keys (a table's path, sha256, ...) become dicts
        for r in records:
            if r.WhichOneof("record_type") == "history":
                for item in r.history.item:
                    keys = list(item.nested_key) or [item.key]
                    node = history
                    for key in keys[:-1]:
                        node = node.setdefault(key, {})
                    node[keys[-1]] = json.loads(item.value_json)
        if set(expected_keys) <= history.keys() or time.time() > deadline:
            return runs[0], records, history
        time.sleep(1)


def summary_of(records):
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                summary["/".join(item.nested_key) or item.key] = json.loads(item.value_json)
    return summary


def table_rows(run_dir, ref):
    """The rows of a logged wandb.Table, from the file W&B wrote next to the run."""
    payload = json.loads((run_dir / "files" / ref["path"]).read_text())
    return payload["columns"], payload["data"]


def test_wandb_run_holds_summary_curve_lslr_table_config_and_tags(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "wb"
    metrics = run(
        make_config(
            [*QUICK, "algo=mamlpp", "algo.inner_steps=2", "algo.test_inner_steps=3", "logger=wandb", "tags=[dash]"],
            output_dir=out,
        )
    )
    run_dir, records, history = offline_run_records(out, ["test/adaptation_curve_table", "inner_lr/table"])

    # the resolved config and the tags of the run
    first = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert {"mamlpp", "sinusoid", "lslr", "dash"} <= set(first.tags)
    config = {
        item.key: json.loads(item.value_json)
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
        if item.key
    }
    assert config["algo"]["inner_lr"] == 0.1 and config["seed"] == 42
    assert config["algo"]["lslr"] is True and config["data"]["name"] == "sinusoid"

    # summary: the test metric and its CI, as in results.json
    summary = summary_of(records)
    for key in ("test/mse", "test/mse_ci95", "test/mse_step0", "val/mse", "test/episodes"):
        assert summary[key] == pytest.approx(metrics[key], rel=1e-12), key

    # the adaptation curve of the evaluated checkpoint: a line plot over a table of the curve
    columns, rows = table_rows(run_dir, history["test/adaptation_curve_table"])
    assert columns == ["inner_step", "mse", "ci95", "low", "high"]
    assert [r[0] for r in rows] == [0, 1, 2, 3]
    assert [r[1] for r in rows] == metrics["test/mse_by_step"]
    assert [r[2] for r in rows] == metrics["test/mse_ci95_by_step"]
    visualize = [
        item
        for r in records
        if r.WhichOneof("record_type") == "config"
        for item in r.config.update
        if list(item.nested_key[:2]) == ["_wandb", "visualize"]
    ]
    panels = {item.nested_key[2]: json.loads(item.value_json) for item in visualize}
    line = panels["test/adaptation_curve"]["panel_config"]
    assert line["panelDefId"] == "wandb/line/v0" and line["fieldSettings"]["x"] == "inner_step"
    assert "val/adaptation_curve" not in panels, "validation computes no curve by default (eval_curve=test)"

    # LSLR: one row per adapted tensor and step, the rates of the evaluated (best) checkpoint
    columns, rows = table_rows(run_dir, history["inner_lr/table"])
    assert columns == ["parameter", "step", "inner_lr"]
    state = torch.load(metrics["best_checkpoint"], weights_only=False)["state_dict"]
    expected = {
        (name[len("inner_lrs.") :].replace("-", "."), k + 1): float(v)
        for name, rates in state.items()
        if name.startswith("inner_lrs.")
        for k, v in enumerate(rates)
    }
    assert {(p, s): v for p, s, v in rows} == pytest.approx(expected, rel=1e-6)
    assert len(rows) == 6 * 2, "MLP 1-40-40-1: 6 tensors x 2 inner steps"


def test_mtnet_fractions_and_ensemble_figure_reach_the_dashboard():
    """MT-net fractions become a table and a bar chart; an ensemble figure is a summary number."""
    metrics = {
        "mtnet/update_fraction/body.0": 0.25,
        "mtnet/update_fraction/head": 0.75,
        "test/acc": 0.5,
        "test/acc_ensemble": 0.625,
    }
    panels = dashboard(metrics)
    table = panels["mtnet/update_fraction_table"]
    assert table.columns == ["layer", "update_fraction"] and table.data == [["body.0", 0.25], ["head", 0.75]]
    assert "mtnet/update_fraction_bar" in panels and "inner_lr/table" not in panels
    from metaplus.loggers import summary_metrics

    assert summary_metrics({**metrics, "best_checkpoint": "x", "test/acc_by_step": [0.1]}) == metrics


def test_wandb_sweep_grid_is_the_ablation_grid_and_every_job_composes(tmp_path):
    """conf/wandb/sweep_mamlpp_ablation.yaml: each grid point is a valid train.py command line."""
    import itertools

    import yaml

    from metaplus.compose import CONFIG_DIR as CONF
    from metaplus.compose import compose_config

    sweep = yaml.safe_load((CONF / "wandb" / "sweep_mamlpp_ablation.yaml").read_text())
    assert sweep["program"] == "train.py" and sweep["method"] == "grid"
    assert "${args_no_hyphens}" in sweep["command"] and "experiment=ablation_mamlpp" in sweep["command"]
    params = sweep["parameters"]
    hydra_grid = compose_config(["experiment=ablation_mamlpp"], tmp_path)  # the Hydra multirun's grid, for comparison
    multirun = yaml.safe_load((CONF / "experiment" / "ablation_mamlpp.yaml").read_text())
    assert params["ablation"]["values"] == multirun["hydra"]["sweeper"]["params"]["ablation"].split(",")
    fixed = [a for a in sweep["command"] if "=" in a and not a.startswith("${")]
    assert params["seed"]["values"] == [1, 2, 3]
    for ablation, seed in zip(params["ablation"]["values"], itertools.cycle(params["seed"]["values"])):
        cfg = compose_config([*fixed, f"ablation={ablation}", f"seed={seed}"], tmp_path / f"{ablation}{seed}")
        assert cfg.seed == seed and cfg.algo.lslr == (ablation in ("lslr", "mamlpp"))
        assert cfg.data.ways == hydra_grid.data.ways and "wandb" in cfg.logger
    assert sweep["metric"]["name"] == hydra_grid.monitor
