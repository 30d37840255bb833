"""metaplus.report: grouping, statistics and files on synthetic results.json trees, then a tiny real
MAML++ ablation on Omniglot (issue 4: "a tiny ablation multirun on Omniglot produces the table")."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from metaplus.compose import compose_config
from metaplus.mamlpp_switches import SWITCHES
from metaplus.report import main, report
from metaplus.run import run
from metaplus.testing import commands, shared_data_dir

ALGO_KEYS = {  # algorithm-specific keys, as the real algo configs have them
    "maml": {"first_order": False, **{s: False for s in SWITCHES}},
    "fomaml": {"first_order": True, **{s: False for s in SWITCHES}},
    "reptile": {"min_meta_lr": 0.0, "inner_optimizer": "sgd"},
    "pretrain": {"finetune": "head"},
}


def write_run(
    path: Path,
    *,
    algo="maml",
    data="omniglot",
    task="classification",
    ways=5,
    shots=1,
    seed=0,
    value=0.9,
    ci=0.01,
    val=0.88,
    wall=10.0,
    variant=None,
    algo_keys=None,
) -> None:
    """A results.json as metaplus.run writes it, with the per-run fields that differ between jobs."""
    metric = "acc" if task == "classification" else "mse"
    config = {
        "seed": seed,
        "algo": {
            "_target_": f"metaplus.algorithms.{algo}",
            "name": algo,
            "inner_lr": 0.4,
            **ALGO_KEYS.get(algo, {}),
            **(algo_keys or {}),
        },
        "data": {
            "name": data,
            "task": task,
            "ways": ways,
            "shots": shots,
            "seed": seed,
            "root": f"/data/{data}",
            "input_shape": [1, 28, 28],
        },
        "paths": {"output_dir": str(path)},
        "callbacks": {"model_checkpoint": {"dirpath": str(path / "checkpoints")}},
        "tags": [],
    }
    if variant is not None:
        config["variant"] = variant
    results = {
        f"val/{metric}": val,
        f"test/{metric}": value,
        f"test/{metric}_ci95": ci,
        "monitor": f"val/{metric}",
        "seed": seed,
        "wall_time_s": wall,
        "config": config,
    }
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps(results))


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


VARIANTS = {"maml": set(), "maml+msl": {"msl"}, "maml+lslr": {"lslr"}, "mamlpp": set(SWITCHES)}


@pytest.fixture
def ablation_sweep(tmp_path):
    """4 variants x 3 seeds numbered like a Hydra multirun (jobs 0..11, so 10 and 11 sort after 9)."""
    sweep = tmp_path / "multiruns" / "2025-01-01_00-00-00"
    rng = np.random.default_rng(0)
    expected = {}
    for v, (variant, on) in enumerate(VARIANTS.items()):
        values, cis = rng.uniform(0.5, 0.99, 3), rng.uniform(0.005, 0.02, 3)
        expected[variant] = (values, cis)
        for s, (value, ci) in enumerate(zip(values, cis)):
            job = v * 3 + s
            write_run(
                sweep / f"{job}_{variant}",
                seed=s + 1,
                value=float(value),
                ci=float(ci),
                wall=100.0 + job,
                variant=variant,
                algo_keys={k: k in on for k in SWITCHES},
            )
    return sweep, expected


def test_ablation_rows_group_seeds_in_job_order(ablation_sweep):
    sweep, expected = ablation_sweep
    paths = report([sweep])
    assert {p.parent for p in paths.values()} == {sweep}, "written into the multirun directory by default"
    rows = read_csv(paths["csv"])
    assert [r["variant"] for r in rows] == list(VARIANTS), "one row per variant, in the sweep's job order"
    for row in rows:
        values, cis = expected[row["variant"]]
        assert float(row["test_mean"]) == pytest.approx(values.mean())
        assert float(row["test_std_over_seeds"]) == pytest.approx(values.std(ddof=1))
        assert float(row["test_ci95"]) == pytest.approx(cis.mean())
        assert (row["runs"], row["seeds"], row["metric"]) == ("3", "1 2 3", "acc")
        assert {s: row[s] == "True" for s in SWITCHES} == {s: s in VARIANTS[row["variant"]] for s in SWITCHES}
        assert len(row["run_dirs"].split(";")) == 3


def test_ablation_markdown_shows_switches_ci_and_seed_spread(ablation_sweep):
    sweep, expected = ablation_sweep
    text = report([sweep])["md"].read_text()
    header = next(line for line in text.splitlines() if line.startswith("| variant"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:7] == ["variant", *SWITCHES]
    assert "test acc (%) ± CI95" in cells and "mean ± std over seeds" in cells and "wall time" in cells
    mamlpp = next(line for line in text.splitlines() if line.startswith("| mamlpp |"))
    values, cis = expected["mamlpp"]
    assert mamlpp.count("✓") == 6
    assert f"{values.mean() * 100:.2f} ± {cis.mean() * 100:.2f}" in mamlpp
    assert f"{values.mean() * 100:.2f} ± {values.std(ddof=1) * 100:.2f}" in mamlpp
    maml = next(line for line in text.splitlines() if line.startswith("| maml |"))
    assert "✓" not in maml
    assert "report.png" in text


def test_a_single_seed_row_has_its_episode_ci_and_no_spread(tmp_path):
    write_run(tmp_path / "0", value=0.75, ci=0.03, variant="maml")
    write_run(tmp_path / "1", value=0.8, ci=0.02, variant="mamlpp", algo_keys={s: True for s in SWITCHES})
    rows = read_csv(report([tmp_path])["csv"])
    assert [(r["runs"], r["test_std_over_seeds"], r["test_ci95"]) for r in rows] == [
        ("1", "", "0.03"),
        ("1", "", "0.02"),
    ]
    assert "| maml |" in (tmp_path / "report.md").read_text()


def test_regression_reports_mse_unscaled(tmp_path):
    for job, (algo, value) in enumerate([("maml", 0.51234), ("metasgd", 0.4), ("maml", 0.6)]):
        write_run(tmp_path / str(job), algo=algo, data="sinusoid", task="regression", shots=5, value=value, seed=job)
    paths = report([tmp_path])
    rows = read_csv(paths["csv"])
    assert [(r["algo"], r["data"], r["metric"], r["runs"]) for r in rows] == [
        ("maml", "sinusoid 5-shot", "mse", "2"),
        ("metasgd", "sinusoid 5-shot", "mse", "1"),
    ]
    assert float(rows[0]["test_mean"]) == pytest.approx(np.mean([0.51234, 0.6]))
    text = paths["md"].read_text()
    assert "test mse ± CI95" in text and f"{np.mean([0.51234, 0.6]):.4g}" in text


def test_algorithm_comparison_hides_algorithm_specific_keys_and_pivots_datasets(tmp_path):
    """Issue 5's table: algorithms x datasets; Reptile's or pre-training's own keys are not columns."""
    job = 0
    for data, ways in (("omniglot", 20), ("miniimagenet", 5)):
        for algo in ALGO_KEYS:
            write_run(tmp_path / "sweep" / str(job), algo=algo, data=data, ways=ways, value=0.5 + job / 100, seed=job)
            job += 1
    paths = report([tmp_path / "sweep"], out=tmp_path / "out", pivot="data")
    rows = read_csv(paths["csv"])
    assert list(rows[0])[:2] == ["algo", "data"] and "algo.min_meta_lr" not in rows[0] and "msl" not in rows[0]
    assert [(r["algo"], r["data"]) for r in rows][:4] == [(a, "omniglot 20w1s") for a in ALGO_KEYS]
    text = paths["md"].read_text()
    pivot = text[text.index("## By data") :].splitlines()
    assert pivot[2].startswith("| algo | omniglot 20w1s | miniimagenet 5w1s |")
    reptile = next(line for line in pivot if line.startswith("| reptile |"))
    assert "52.00 ± 1.00" in reptile and "56.00 ± 1.00" in reptile  # jobs 2 and 6: 0.5 + job/100, ci 0.01


def test_a_swept_hyperparameter_becomes_a_column(tmp_path):
    for job, lr in enumerate([0.1, 0.4, 0.1]):
        write_run(tmp_path / str(job), algo_keys={"inner_lr": lr}, seed=job)
    rows = read_csv(report([tmp_path])["csv"])
    assert [(r["algo.inner_lr"], r["runs"]) for r in rows] == [("0.1", "2"), ("0.4", "1")]


def test_a_switch_sweep_without_variants_names_rows_by_their_switches(tmp_path):
    """``-m algo=maml algo.msl=true,false algo.lslr=true,false`` has no variant labels."""
    job = 0
    for msl in (False, True):
        for lslr in (False, True):
            write_run(tmp_path / str(job), algo_keys={"msl": msl, "lslr": lslr})
            job += 1
    rows = read_csv(report([tmp_path])["csv"])
    assert [r["variant"] for r in rows] == ["maml", "maml+lslr", "maml+msl", "maml+msl+lslr"]


def test_the_switches_are_the_callers_to_name(tmp_path, capsys):
    """The reporter knows no algorithm: another learner's true/false keys become switch columns when named,
    and MAML++'s default ones then are ordinary keys (here: a column of their own, as any swept key)."""
    for job, (center, msl) in enumerate([(False, False), (True, False), (False, True)]):
        write_run(tmp_path / str(job), algo="protonet", algo_keys={"center": center, "msl": msl})
    rows = read_csv(report([tmp_path], out=tmp_path / "named", switches=["center"])["csv"])
    assert [r["variant"] for r in rows] == ["protonet", "protonet+center", "protonet"]
    assert list(rows[0])[:3] == ["variant", "center", "algo.msl"]
    text = (tmp_path / "named" / "report.md").read_text()
    assert "| protonet+center | ✓ | False |" in text and "| protonet |  | True |" in text
    default = read_csv(report([tmp_path], out=tmp_path / "default")["csv"])  # MAML++'s six: msl is one
    assert [r["variant"] for r in default] == ["protonet", "protonet", "protonet+msl"]
    main([str(tmp_path / "0"), str(tmp_path / "1"), "--out", str(tmp_path / "none"), "--switches"])
    capsys.readouterr()
    assert [r["algo.center"] for r in read_csv(tmp_path / "none" / "report.csv")] == ["False", "True"]


def test_a_misspelt_switch_is_an_error_naming_the_keys_there_are(tmp_path, capsys):
    write_run(tmp_path / "0", algo_keys={"msl": True})
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--switches", "msll"])
    assert "--switches msll: no run has a true/false algo.msll" in capsys.readouterr().err
    assert not (tmp_path / "report.md").exists()


def test_cli_accepts_globs_and_writes_to_out(ablation_sweep, tmp_path, capsys):
    sweep, _ = ablation_sweep
    out = tmp_path / "report"
    main([str(sweep.parent / "2025-*"), "--out", str(out), "--title", "MAML++ ablation"])
    assert "# MAML++ ablation" in capsys.readouterr().out
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(read_csv(out / "report.csv")) == len(VARIANTS)


def test_no_results_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no results.json under"):
        report([tmp_path])
    write_run(tmp_path / "0")
    with pytest.raises(ValueError, match="--pivot nope"):
        report([tmp_path], pivot="nope")


def test_metrics_globs_add_columns_averaged_over_seeds(tmp_path):
    for job, (order, seed, fraction) in enumerate([(0, 1, 0.50), (0, 2, 0.60), (2, 1, 0.80), (2, 2, 0.90)]):
        write_run(
            tmp_path / str(job),
            algo="mtnet",
            data="polynomial",
            task="regression",
            seed=seed,
            algo_keys={"order": order},
        )
        results_file = tmp_path / str(job) / "results.json"
        results = json.loads(results_file.read_text())
        results.update(
            {"mtnet/update_fraction/body.0": fraction, "mtnet/update_fraction/all": fraction / 2, "mtnet/other": 1.0}
        )
        results_file.write_text(json.dumps(results))
    paths = report([tmp_path], metrics=["mtnet/update_fraction/*"])
    table = [line for line in paths["md"].read_text().splitlines() if line.startswith("|")]
    assert table[0].endswith("| mtnet/update_fraction/body.0 | mtnet/update_fraction/all |")
    assert "mtnet/other" not in table[0]
    assert table[2].endswith("| 0.55 | 0.275 |") and table[3].endswith("| 0.85 | 0.425 |")
    rows = read_csv(paths["csv"])
    assert [float(r["mtnet/update_fraction/body.0"]) for r in rows] == pytest.approx([0.55, 0.85])
    with pytest.raises(ValueError, match="--metrics 'tnet/\\*' matches no numeric key"):
        report([tmp_path], metrics=["tnet/*"])


# -- a tiny real ablation on Omniglot ---------------------------------------------------------------
TINY = [
    "logger=none",
    "model.filters=4",
    "data.ways=5",
    "data.meta_batch_size=2",
    "data.batches_per_epoch=1",
    "data.val_episodes=4",
    "data.test_episodes=4",
    "trainer.max_epochs=1",
    "algo.inner_steps=2",
    "algo.test_inner_steps=2",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
]


def needs_omniglot():
    if shared_data_dir() is None or not (shared_data_dir() / "omniglot").is_dir():
        pytest.skip("the tiny ablation trains on the shared Omniglot data (METAPLUS_DATA or ../shared/data): absent")


def test_tiny_ablation_on_omniglot_gives_one_row_per_variant(tmp_path):
    needs_omniglot()
    sweep = tmp_path / "sweep"
    variants = ["maml", "lslr", "mamlpp"]
    for job, variant in enumerate(variants):
        run(compose_config(["experiment=ablation_mamlpp", f"ablation={variant}", *TINY], sweep / f"{job}_{variant}"))
    rows = read_csv(report([sweep])["csv"])
    assert [r["variant"] for r in rows] == ["maml", "maml+lslr", "mamlpp"]
    assert [[r[s] for s in SWITCHES] for r in rows] == [["False"] * 6, ["False"] * 4 + ["True", "False"], ["True"] * 6]
    for job, (variant, row) in enumerate(zip(variants, rows)):  # each row is its run's results.json
        results = json.loads((sweep / f"{job}_{variant}" / "results.json").read_text())
        assert float(row["test_mean"]) == pytest.approx(results["test/acc"], rel=1e-9) and row["runs"] == "1"
        assert float(row["test_ci95"]) == pytest.approx(results["test/acc_ci95"], rel=1e-9)
        # 4 episodes x 5 ways x 1 query (the experiment's setting): the mean accuracy is a multiple of 1/20
        assert results["test/acc"] * 20 == pytest.approx(round(results["test/acc"] * 20), abs=1e-6)


@pytest.mark.slow
def test_ablation_multirun_cli_and_report(tmp_path):
    """The documented command: one Hydra multirun of the default grid, W&B offline, then the report."""
    needs_omniglot()
    quick = [o for o in TINY if o != "logger=none"]
    proc = commands.train(
        "-m", "experiment=ablation_mamlpp", "logger=wandb", *quick, cwd=tmp_path, timeout=600, HYDRA_FULL_ERROR="1"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = commands.only_directory(tmp_path / "outputs" / "multiruns")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(jobs) == 8 and "1_maml+msl" in jobs and "7_mamlpp" in jobs
    for job in ("1_maml+msl", "7_mamlpp"):  # each W&B run is in the sweep's group and tagged by its switches
        record = next((sweep / job / "wandb").glob("offline-run-*/*.wandb")).read_bytes()
        assert sweep.name.encode() in record and job.split("_", 1)[1].encode() in record
    out = commands.python(["-m", "metaplus.report", str(sweep)], cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = read_csv(sweep / "report.csv")
    assert [r["variant"] for r in rows] == ["maml", *(f"maml+{s}" for s in SWITCHES), "mamlpp"]
    assert (sweep / "report.png").is_file() and "| mamlpp |" in (sweep / "report.md").read_text()
