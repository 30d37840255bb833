"""metaplus.reproduce (issue 12): the registry composes through the presets, the budget arithmetic,
resume/skip on fake run directories, and the JSON/markdown built from fake results.json files."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from metaplus.compose import compose_config
from metaplus.presets import applied_row, row_name
from metaplus.reproduce import calibration, cli, locations, phases, planner, registry, render, runner
from metaplus.reproduce import report as reporting


# -- the registry composes through the presets ---------------------------------------------------------
@pytest.mark.parametrize("name", list(registry.ROWS))
def test_each_row_composes_its_preset_and_published_row(name):
    row = registry.ROWS[name]
    cfg = compose_config(row.overrides)
    assert cfg.preset.name == row.preset
    requested, applied = applied_row(cfg)
    assert requested == applied == row_name(cfg.data)  # the paper published this very row
    assert (cfg.algo.name, cfg.data.name, cfg.data.shots) == (row.algo, row.data, row.shots)
    if row.ways is not None:
        assert cfg.data.ways == row.ways
    # The registry's paper budget is the preset's epochs x iterations.
    assert cfg.trainer.max_epochs * cfg.data.batches_per_epoch == row.paper_iterations


def test_schedules_and_derivative_orders_read_from_the_presets():
    maml20 = phases.preset_schedule(registry.ROWS["maml_omniglot_20w1s"])
    assert (maml20.epochs, maml20.batches_per_epoch, maml20.test_inner_steps) == (120, 500, 10)
    assert maml20.derivative_order == "second"
    assert phases.preset_schedule(registry.ROWS["fomaml_miniimagenet_5w1s"]).derivative_order == "first"
    assert phases.preset_schedule(registry.ROWS["reptile_omniglot_5w1s"]).derivative_order == "first (Reptile)"
    mamlpp = phases.preset_schedule(registry.ROWS["mamlpp_omniglot_5w1s"])  # released configs: da_epochs 0
    assert (mamlpp.epochs, mamlpp.derivative_order, mamlpp.test_inner_steps) == (100, "second", 5)


def test_groups_and_unknown_rows():
    assert [r.name for r in registry.select_rows("quick")] == ["maml_sinusoid_5shot", "maml_omniglot_5w1s"]
    assert len(registry.select_rows("cpu")) == len(registry.ROWS) == 14
    assert [r.name for r in registry.select_rows("anil_omniglot_20w1s,quick,anil_omniglot_20w1s")] == [
        "anil_omniglot_20w1s",
        "maml_sinusoid_5shot",
        "maml_omniglot_5w1s",
    ]
    with pytest.raises(SystemExit, match="maml_omniglot_1w1s"):
        registry.select_rows("maml_omniglot_1w1s")


def test_registry_files_name_their_bad_key(tmp_path):
    """The registry is data (one YAML file per paper): a misspelt key or an unlisted row is named with its file."""
    import shutil

    folder = tmp_path / "rows"
    shutil.copytree(registry.ROWS_DIR, folder)
    assert registry.load_registry(folder)[0] == registry.ROWS
    anil = folder / "anil.yaml"
    anil.write_text(anil.read_text().replace("paper_ci:", "paper_cl:"))
    with pytest.raises(
        registry.RegistryError,
        match=r"rows/anil.yaml: anil_omniglot_20w1s: unknown key\(s\) "
        r"\['paper_cl'\]; allowed: .*'paper_ci'",
    ):
        registry.load_registry(folder)
    anil.write_text(anil.read_text().replace("paper_cl:", "paper_ci:").replace("anil_omniglot_20w1s:", "anil_x:"))
    with pytest.raises(
        registry.RegistryError,
        match=r"rows/table.yaml: order .* not listed: \['anil_x'\], "
        r"unknown or repeated: \['anil_omniglot_20w1s'\]",
    ):
        registry.load_registry(folder)


# -- budget scaling ------------------------------------------------------------------------------------
OMNIGLOT = phases.Schedule(
    epochs=120, batches_per_epoch=500, preset="maml_omniglot", derivative_order="second", test_inner_steps=10
)


def test_budget_keeps_the_epochs_and_shrinks_the_iterations():
    # 30 min, 1 s/iteration, 20 ms per validation episode: a validation of 100 episodes = 2 s;
    # 15 % of 1800 s affords 135 of them -> capped at 20; (0.9 * 1800 - 20 * 2) / 1 = 1580 iterations,
    # 1580 // 120 epochs = 13 per epoch; the smallest divisor d of 120 with 120 / d <= 20 is 6.
    plan = planner.plan_budget(OMNIGLOT, planner.Timing(1.0, 0.02), 1800)
    assert (plan.epochs, plan.batches_per_epoch, plan.val_every, plan.validations) == (120, 13, 6, 20)
    assert plan.planned_iterations == 1560 and plan.planned_val_s == pytest.approx(40.0)
    assert plan.schedule_complete
    assert planner.budget_overrides(plan, OMNIGLOT, 1800) == [
        "data.batches_per_epoch=13",
        "trainer.check_val_every_n_epoch=6",
        "data.val_episodes=100",
        "+trainer.max_time=00:00:30:00",
    ]


def test_expensive_validation_gets_fewer_validations():
    # One validation = 100 * 0.5 s = 50 s; 15 % of 1800 s = 270 s affords 5; (1620 - 250) / 1 = 1370
    # iterations -> 11 per epoch; 120 / d <= 5 -> d = 24.
    plan = planner.plan_budget(OMNIGLOT, planner.Timing(1.0, 0.5), 1800)
    assert (plan.batches_per_epoch, plan.val_every, plan.validations) == (11, 24, 5)


def test_budget_below_one_iteration_per_epoch_cuts_the_epochs():
    # 300 s, 5 s/iteration, 0.5 s per validation episode: 5 validations of 100 would not fit 15 % (45 s),
    # so 45 / (5 * 0.5) = 18 -> 20 episodes (the floor); 10 s each, 4 affordable; (270 - 40) / 5 = 46
    # iterations < 120 epochs -> 46 epochs of 1; divisors of 46 with 46 / d <= 4: d = 23.
    plan = planner.plan_budget(OMNIGLOT, planner.Timing(5.0, 0.5), 300)
    assert (plan.val_episodes, plan.epochs, plan.batches_per_epoch, plan.val_every, plan.validations) == (
        20,
        46,
        1,
        23,
        2,
    )
    assert not plan.schedule_complete
    assert planner.budget_overrides(plan, OMNIGLOT, 300) == [
        "trainer.max_epochs=46",
        "data.batches_per_epoch=1",
        "trainer.check_val_every_n_epoch=23",
        "data.val_episodes=20",
        "+trainer.max_time=00:00:05:00",
    ]


def test_expensive_validation_shrinks_the_episodes_to_keep_five_validations():
    # mini-ImageNet-like: 60 min, 10 s/iteration, 6 s per episode: 0.15 * 3600 / (5 * 6) = 18 -> 20
    # episodes = 120 s per validation, 540 / 120 = 4 affordable; (3240 - 480) / 10 = 276 iterations,
    # 276 // 120 = 2 per epoch; 120 / d <= 4 -> d = 30.
    plan = planner.plan_budget(OMNIGLOT, planner.Timing(10.0, 6.0), 3600)
    assert (plan.val_episodes, plan.batches_per_epoch, plan.val_every, plan.validations) == (20, 2, 30, 4)


def test_an_unscheduled_preset_trains_fewer_fuller_epochs_instead_of_losing_iterations():
    # Nothing counts MAML Omniglot's 120 epochs: 340 affordable iterations are not 120 x 2 = 240 but
    # 3 per epoch; 113 epochs (prime) would validate once, so 112 (every 7 epochs, 16 >= 20 // 2 times).
    unscheduled = phases.Schedule(**{**OMNIGLOT.__dict__, "epoch_scheduled": False})
    assert planner.fewer_fuller_epochs(340, unscheduled, 20) == (112, 3)
    plan = planner.plan_budget(unscheduled, planner.Timing(1.0, 0.02), 600)  # (540 - 20 * 2) / 1 = 500 iterations
    kept = planner.plan_budget(OMNIGLOT, planner.Timing(1.0, 0.02), 600)
    assert (kept.epochs, kept.batches_per_epoch, kept.planned_iterations) == (120, 4, 480)
    assert plan.batches_per_epoch == 5 and 480 < plan.planned_iterations <= 500
    assert plan.epochs % plan.val_every == 0 and plan.validations >= 10 and plan.schedule_complete
    assert planner.budget_overrides(plan, unscheduled, 600)[0] == f"trainer.max_epochs={plan.epochs}"
    # the presets say which is which: MAML's constant meta learning rate, MAML++'s MSL and cosine
    assert not phases.preset_schedule(registry.ROWS["maml_omniglot_5w1s"]).epoch_scheduled
    assert phases.preset_schedule(registry.ROWS["mamlpp_omniglot_5w1s"]).epoch_scheduled


def test_budget_never_exceeds_the_paper_iterations():
    plan = planner.plan_budget(OMNIGLOT, planner.Timing(0.001, 0.001), 3600)
    assert (plan.batches_per_epoch, plan.planned_iterations) == (500, 60_000)


def test_validation_interval_and_max_time():
    assert planner.validation_interval(70, 20) == 5  # 4 does not divide 70
    assert planner.validation_interval(100, 20) == 5
    assert planner.validation_interval(7, 3) == 7  # a prime: only the last epoch
    assert planner.max_time(1800) == "00:00:30:00"
    assert planner.max_time(90_061.2) == "01:01:01:02"


def test_max_time_key_composes_into_the_trainer(make_config):
    cfg = make_config(["algo=maml", "data=sinusoid", "+trainer.max_time=00:00:30:00"])
    assert cfg.trainer.max_time == "00:00:30:00"


# -- resume / skip on fake run directories ---------------------------------------------------------------
def fake_results(
    directory: Path,
    *,
    seed: int,
    test: float,
    ci: float,
    val: float,
    metric: str = "acc",
    ensemble: float | None = None,
    curve: list[tuple[float, float]] = (),
    step: int = 600,
    algo: dict | None = None,
    by_step: list[float] | None = None,
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    results = {
        f"test/{metric}": test,
        f"test/{metric}_ci95": ci,
        f"val/{metric}": val,
        "test/episodes": 600,
        "global_step": step,
        "epochs": 120,
        "wall_time_s": 1900.0,
        "seed": seed,
        "preset": {"name": "x"},
        "config": {"algo": algo or {"name": "maml", "first_order": False}},
    }
    if ensemble is not None:
        results.update({f"test/{metric}_ensemble": ensemble, f"test/{metric}_ensemble_ci95": ci / 2})
    if by_step is not None:  # the test curve: value after 0, 1, ... inner steps (the last one is `test`)
        results.update({f"test/{metric}_by_step": by_step, f"test/{metric}_ci95_by_step": [ci * 2] * len(by_step)})
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "csv").mkdir(exist_ok=True)
    with (directory / "csv" / "metrics.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "step", f"val/{metric}", "time/train_s"])
        writer.writeheader()
        for epoch, (seconds, value) in enumerate(curve):  # Lightning logs the two on separate lines
            writer.writerow({"epoch": epoch, "step": epoch, f"val/{metric}": value})
            writer.writerow({"epoch": epoch, "step": epoch, "time/train_s": seconds})


def test_done_seed_is_skipped_and_interrupted_one_resumes(tmp_path, monkeypatch):
    row = registry.ROWS["maml_sinusoid_5shot"]
    calls = []

    def fake_train(overrides, threads, log):
        calls.append(list(overrides))
        directory = Path(next(o for o in overrides if o.startswith("hydra.run.dir=")).split("=", 1)[1])
        fake_results(directory, seed=1, test=1.0, ci=0.1, val=1.1, metric="mse", curve=[(10.0, 2.0)])

    monkeypatch.setattr(runner, "run_train", fake_train)
    done = runner.run_dir(row, 1, tmp_path)
    fake_results(done, seed=1, test=1.0, ci=0.1, val=1.1, metric="mse")
    assert runner.run_seed(row, 1, ["data.batches_per_epoch=3"], "default", 1, {}, tmp_path) == "done"
    assert calls == []

    interrupted = runner.run_dir(row, 2, tmp_path)
    (interrupted / "checkpoints").mkdir(parents=True)
    (interrupted / "checkpoints" / "last.ckpt").write_bytes(b"")
    (interrupted / "csv").mkdir()
    (interrupted / "csv" / "metrics.csv").write_text("epoch,time/train_s\n0,5.0\n")
    first_launch = ["algo=maml", f"hydra.run.dir={interrupted}", "data.batches_per_epoch=7"]
    (interrupted / "plan.json").write_text(json.dumps({"overrides": first_launch, "threads": 1, "plan": {}}))
    assert runner.seed_state(interrupted) == "resume"
    # A new budget does not change a resumed run: it continues with its first launch's overrides.
    assert runner.run_seed(row, 2, ["data.batches_per_epoch=99"], "default", 1, {}, tmp_path) == "resume"
    assert calls[-1] == first_launch + [f"ckpt_path={interrupted / 'checkpoints' / 'last.ckpt'}"]
    assert (interrupted / "csv" / "metrics.before-resume0.csv").read_text() == "epoch,time/train_s\n0,5.0\n"
    assert (interrupted / "summary.json").is_file()

    fresh = runner.run_dir(row, 3, tmp_path)
    assert runner.run_seed(row, 3, ["data.batches_per_epoch=3"], "default", 1, {"budget_min": 2}, tmp_path) == "new"
    assert calls[-1][:4] == ["algo=maml", "data=sinusoid", "data.shots=5", "seed=3"]
    assert "data.batches_per_epoch=3" in calls[-1] and "data.test_episodes=600" in calls[-1]
    assert not any(o.startswith("ckpt_path=") for o in calls[-1])
    assert json.loads((fresh / "plan.json").read_text())["overrides"] == calls[-1]


def test_quick_group_runs_end_to_end_apart_from_the_committed_reproduction(tmp_path, monkeypatch):
    committed = tmp_path / "committed"
    monkeypatch.setattr(locations, "RUNS", committed / "runs")
    monkeypatch.setattr(locations, "JSON_OUT", committed / "reproduction.json")
    monkeypatch.setattr(locations, "DOC_OUT", committed / "docs" / "reproduction.md")
    monkeypatch.setattr(locations, "QUICK_RUNS", tmp_path / "quick")
    trained = []

    def fake_train(overrides, threads, log):
        timing = next((o.split("=", 1)[1] for o in overrides if o.startswith("+callbacks.calibration.out=")), None)
        if timing:  # the calibration run
            Path(timing).write_text(
                json.dumps(
                    {
                        "s_per_iteration": 0.5,
                        "s_per_val_episode": 0.01,
                        "cpu_s_per_iteration": 0.4,
                        "cpu_s_per_val_episode": 0.01,
                    }
                )
            )
            return
        directory = Path(next(o for o in overrides if o.startswith("hydra.run.dir=")).split("=", 1)[1])
        trained.append(directory)
        mse = any(o == "data=sinusoid" for o in overrides)
        fake_results(
            directory,
            seed=1,
            test=0.5 if mse else 0.9,
            ci=0.05,
            val=0.5 if mse else 0.9,
            metric="mse" if mse else "acc",
            curve=[(60.0, 0.5 if mse else 0.9)],
        )

    monkeypatch.setattr(runner, "run_train", fake_train)
    cli.main(["--rows", "quick"])
    quick = tmp_path / "quick"
    assert sorted(d.parent.name for d in trained) == ["maml_omniglot_5w1s", "maml_sinusoid_5shot"]
    assert all(d.is_relative_to(quick) for d in trained) and not committed.exists()
    report = json.loads((quick / "reproduction.json").read_text())
    assert [r["row"] for r in report["rows"]] == ["maml_sinusoid_5shot", "maml_omniglot_5w1s"]  # a small table
    assert {t["row"] for t in report["time_to_accuracy"]} == {"maml_omniglot_5w1s"}
    assert set(report["calibration"][f"cpu:{os.cpu_count()}cores:{os.cpu_count()}threads"]) == {
        "maml_omniglot_5w1s",
        "maml_sinusoid_5shot",
    }
    text = (quick / "reproduction.md").read_text()
    assert "![curves](curves.png)" in text and "maml sinusoid 5-shot" in text and "mamlpp" not in text
    # its commands regenerate into its own folder, not into the committed runs
    out = "--out <the folder of this table>"  # outside the repository: never this machine's path
    assert all(r["command"].endswith(out) for r in report["rows"])
    assert all(t["command"].endswith(out) for t in report["time_runs"])
    assert f"--rows maml_sinusoid_5shot,maml_omniglot_5w1s {out} --report-only" in text
    # the second call finds both seeds done: it trains nothing and re-renders the same table
    cli.main(["--rows", "quick"])
    assert len(trained) == 2 and (quick / "reproduction.md").read_text() == text
    cli.main(["--report-only"])  # without --rows: the committed table of every row, not the quick one
    assert len(json.loads((committed / "reproduction.json").read_text())["rows"]) == len(registry.ROWS)


# -- JSON and markdown from fake results ------------------------------------------------------------------
def test_report_from_fake_results(tmp_path):
    root = tmp_path / "runs"
    for seed, (test, ci) in enumerate([(0.97, 0.010), (0.98, 0.012), (0.99, 0.014)], start=1):
        directory = runner.run_dir(registry.ROWS["maml_omniglot_5w1s"], seed, root)
        fake_results(
            directory,
            seed=seed,
            test=test,
            ci=ci,
            val=test + 0.005,
            step=6000,
            curve=[(300.0, 0.90), (600.0, 0.95), (1200.0, 0.96), (1800.0, 0.97)],
        )
        (directory / "plan.json").write_text(
            json.dumps({"overrides": ["algo=maml"], "threads": 1, "plan": {"budget_min": 30}})
        )
    fake_results(
        runner.run_dir(registry.ROWS["mamlpp_omniglot_5w1s"], 1, root),
        seed=1,
        test=0.99,
        ci=0.004,
        val=0.99,
        ensemble=0.995,
        algo={"name": "mamlpp", "da": True, "da_epochs": 0},
        curve=[(60.0, 0.9)],
    )
    # The paper's MAML 5-shot figure adapts in 1 step: step 1 of the curve (1.4) is compared, not test (0.5).
    fake_results(
        runner.run_dir(registry.ROWS["maml_sinusoid_5shot"], 1, root),
        seed=1,
        test=0.5,
        ci=0.1,
        val=1.0,
        metric="mse",
        curve=[(60.0, 1.5)],
        by_step=[3.0, 1.4, 0.9, 0.5],
    )
    fake_results(
        runner.run_dir(registry.ROWS["metasgd_sinusoid_5shot"], 1, root),
        seed=1,
        test=0.5,
        ci=0.1,
        val=1.0,
        metric="mse",
    )  # no test curve kept: nothing to compare
    fake_results(
        runner.run_dir(registry.ROWS["maml_sinusoid_10shot"], 1, root), seed=1, test=0.5, ci=0.05, val=0.5, metric="mse"
    )
    report = render.write_report(list(registry.ROWS.values()), root, tmp_path / "r.json", tmp_path / "r.md")
    rows = {r["row"]: r for r in json.loads((tmp_path / "r.json").read_text())["rows"]}

    maml = rows["maml_omniglot_5w1s"]
    assert maml["ours"] == pytest.approx(0.98) and maml["ours_ci95"] == pytest.approx(0.012)
    assert maml["ours_std_over_seeds"] == pytest.approx(0.01)  # sample std of .97 .98 .99
    assert maml["reproduced"] is False  # 0.98 < 0.987 - 0.004
    assert maml["gap"] == pytest.approx(-0.007)
    assert maml["iterations_per_seed"] == [6000] * 3 and maml["iterations_fraction_of_paper"] == pytest.approx(0.1)
    assert maml["seeds"] == [1, 2, 3] and maml["budget_min"] == 30 and maml["derivative_order"] == "second"
    assert maml["train_minutes_per_seed"] == [30.0] * 3

    mamlpp = rows["mamlpp_omniglot_5w1s"]  # the paper reports the ensemble: 0.995 >= 0.9947 (no CI)
    assert (mamlpp["ours_ensemble"], mamlpp["compared"], mamlpp["reproduced"]) == (0.995, "ensemble", True)
    assert mamlpp["ours_ensemble_ci95"] == pytest.approx(0.002) and mamlpp["ours_std_over_seeds"] is None
    sinusoid = rows["maml_sinusoid_5shot"]
    assert sinusoid["ours_at_paper_test_steps"] == {
        "steps": 1,
        "ours": 1.4,
        "ours_std_over_seeds": None,
        "ours_ci95": pytest.approx(0.2),
    }
    assert sinusoid["reproduced"] is False and sinusoid["gap"] == pytest.approx(1.4 - 1.13)  # 1.4 > 1.13 + 0.18
    assert sinusoid["ours"] == 0.5 and "after 1 inner step" in sinusoid["compared"]
    assert rows["metasgd_sinusoid_5shot"]["reproduced"] is None and rows["metasgd_sinusoid_5shot"]["gap"] is None
    markdown = (tmp_path / "r.md").read_text()
    assert "| maml sinusoid 5-shot | 1.130 ± 0.180 | 1.400 ± 0.200 after 1 step(s) (0.500 ± 0.100) |" in markdown
    assert "not compared" in markdown
    assert rows["maml_sinusoid_10shot"]["reproduced"] is None  # no paper value
    assert rows["anil_omniglot_20w1s"]["status"] == "not run"
    assert rows["anil_omniglot_20w1s"]["command"].startswith("python bench/reproduce.py --rows anil_omniglot_20w1s")
    mtnet = rows["mtnet_polynomial_10shot"]  # from bench/results/mtnet_polynomial_60k
    assert mtnet["update_fraction_by_order"] == {"0": 0.685, "1": 0.84, "2": 0.893} and mtnet["reproduced"] is True

    times = {(t["row"], t["minutes"]): t for t in report["time_to_accuracy"]}
    # 10 min from the 30-min runs' curves: best val within 600 s = 0.95, each seed's test - val = -0.005
    assert times[("maml_omniglot_5w1s", 10)]["test_acc"] == pytest.approx(0.945)
    assert times[("maml_omniglot_5w1s", 10)]["method"] == "val curve + (test - val)"
    # 30 min: the 30-min runs' own tests, mean of .97 .98 .99
    assert times[("maml_omniglot_5w1s", 30)]["test_acc"] == pytest.approx(0.98)
    assert times[("maml_omniglot_5w1s", 30)]["method"] == "test of a 30-min run"
    assert times[("maml_miniimagenet_5w1s", 60)]["status"] == "not run"
    assert report["targets"][0]["reached"] is True  # 0.98 >= 0.97 within 30 min

    md = (tmp_path / "r.md").read_text()
    assert "| maml omniglot 5w1s | 98.70 ± 0.40 | 98.00 ± 1.20 | 1.00 (3) | no (-0.70) | 6.0k / 60.0k | 30 min" in md
    assert "| mamlpp omniglot 5w1s | 99.47 | 99.50 ± 0.20 (99.00 ± 0.40) |" in md
    assert "| anil omniglot 20w1s | 96.20 ± 0.50 | not run |" in md
    assert "| maml_omniglot_5w1s | 10 | 94.50 | 10.0 | 3 | val curve + (test - val) |" in md
    assert str(tmp_path) not in md and (root / "curves.png").is_file()


def test_time_rows_give_the_longer_point_and_leave_the_table_row_alone(tmp_path, monkeypatch):
    """MAML mini-ImageNet: its table row trained 30 min, its time row 60; each time point is a direct test."""
    timed = registry.TIME_ROWS["maml_miniimagenet_5w1s_60min"]
    assert (timed.time_of, timed.budget_min, timed.overrides) == (
        "maml_miniimagenet_5w1s",
        60.0,
        registry.ROWS["maml_miniimagenet_5w1s"].overrides,
    )
    assert timed in registry.select_rows("time") and timed.name not in [r.name for r in registry.select_rows("cpu")]
    root = tmp_path / "runs"
    for row, minutes, test in [(registry.ROWS["maml_miniimagenet_5w1s"], 30, 0.31), (timed, 60, 0.36)]:
        directory = runner.run_dir(row, 1, root)
        fake_results(
            directory,
            seed=1,
            test=test,
            ci=0.006,
            val=test + minutes / 3000,
            curve=[(600.0, 0.25), (1800.0, 0.32), (2000.0, 0.37)][: minutes // 30 + 1],
        )
        (directory / "plan.json").write_text(
            json.dumps({"overrides": [], "threads": 1, "plan": {"budget_min": minutes}})
        )
    monkeypatch.setattr(locations, "RUNS", root)  # the committed table: commands without --out
    report = render.write_report(list(registry.ROWS.values()), root, tmp_path / "r.json", tmp_path / "r.md")
    times = {(t["row"], t["minutes"]): t for t in report["time_to_accuracy"]}
    md = (tmp_path / "r.md").read_text()
    # The 60-min run trained 2000 s of its hour (validations, rounding): said next to its figure.
    assert "| maml_miniimagenet_5w1s | 60 | 36.00 | 33.3 | 1 | test of a 60-min run |" in md
    assert (
        "- maml_miniimagenet_5w1s_60min (time to accuracy): `python bench/reproduce.py --rows "
        "maml_miniimagenet_5w1s_60min --seeds 1 --threads 1`" in md
    )  # the threads its run used
    # 30 min: the 30-min run's test (the 60-min run's curve estimate, 0.32 - 0.02, is not mixed in)
    assert (times[("maml_miniimagenet_5w1s", 30)]["test_acc"], times[("maml_miniimagenet_5w1s", 30)]["seeds"]) == (
        pytest.approx(0.31),
        1,
    )
    assert times[("maml_miniimagenet_5w1s", 60)]["test_acc"] == pytest.approx(0.36)
    assert times[("maml_miniimagenet_5w1s", 60)]["method"] == "test of a 60-min run"
    (row,) = [r for r in report["rows"] if r["row"] == "maml_miniimagenet_5w1s"]
    assert row["ours"] == pytest.approx(0.31) and row["budget_min"] == 30  # the table row is not averaged in
    assert (
        reporting.time_command("maml_miniimagenet_5w1s", 60)
        == "python bench/reproduce.py --rows maml_miniimagenet_5w1s_60min --seeds 1"
    )
    assert (
        reporting.command_for(registry.ROWS["maml_miniimagenet_5w1s"], 60)
        == "python bench/reproduce.py --rows maml_miniimagenet_5w1s --budget-min 60 --seeds 1"
    )
    with pytest.raises(SystemExit, match="always trains 60 min"):
        cli.main(["--rows", "maml_miniimagenet_5w1s_60min", "--budget-min", "30"])
    with pytest.raises(SystemExit, match="maml_omniglot_5w1s_10min always trains 10 min"):
        cli.main(["--rows", "time", "--budget-min", "30"])


def test_a_time_row_replaces_the_table_rows_runs_at_its_minute(tmp_path, monkeypatch):
    """MAML Omniglot 5w1s: 30-min table runs (an older plan) and a 30-min time row: the time row's test is
    the 30-min point, the table row keeps its own three seeds, the 10-min time row gives 10 min directly."""
    root = tmp_path / "runs"
    runs = [(registry.ROWS["maml_omniglot_5w1s"], seed, 30, 0.94, 700.0) for seed in (1, 2, 3)]
    runs += [
        (registry.TIME_ROWS["maml_omniglot_5w1s_30min"], 1, 30, 0.96, 1650.0),
        (registry.TIME_ROWS["maml_omniglot_5w1s_10min"], 1, 10, 0.91, 540.0),
    ]
    for row, seed, minutes, test, train_s in runs:
        directory = runner.run_dir(row, seed, root)
        fake_results(directory, seed=seed, test=test, ci=0.008, val=test, curve=[(train_s, test)])
        (directory / "plan.json").write_text(
            json.dumps({"overrides": [], "threads": 1, "plan": {"budget_min": minutes}})
        )
    monkeypatch.setattr(locations, "RUNS", root)  # the committed table: commands without --out
    report = render.write_report(list(registry.ROWS.values()), root, tmp_path / "r.json", tmp_path / "r.md")
    times = {(t["row"], t["minutes"]): t for t in report["time_to_accuracy"]}
    assert (times[("maml_omniglot_5w1s", 30)]["test_acc"], times[("maml_omniglot_5w1s", 30)]["seeds"]) == (
        pytest.approx(0.96),
        1,
    )
    assert times[("maml_omniglot_5w1s", 10)]["test_acc"] == pytest.approx(0.91)
    assert times[("maml_omniglot_5w1s", 10)]["method"] == "test of a 10-min run"
    (row,) = [r for r in report["rows"] if r["row"] == "maml_omniglot_5w1s"]
    assert row["ours"] == pytest.approx(0.94) and row["seeds"] == [1, 2, 3]
    assert row["command"] == "python bench/reproduce.py --rows maml_omniglot_5w1s --budget-min 30 --seeds 3 --threads 1"
    assert reporting.threads_of([{"threads": 1}, {"threads": 2}]) is None and reporting.threads_of([{}]) is None
    # table runs planned on CPU seconds (as the time row) are 30-min measurements too: they count beside it
    for seed in (1, 2, 3):
        plan = runner.run_dir(registry.ROWS["maml_omniglot_5w1s"], seed, root) / "plan.json"
        plan.write_text(
            json.dumps(
                {
                    "overrides": [],
                    "threads": 1,
                    "plan": {"budget_min": 30, "timing": "measured CPU time (cpu:2cores:1threads)"},
                }
            )
        )
        (plan.parent / "summary.json").unlink()  # written by the first report: summarised again from the run
    monkeypatch.setattr(locations, "RUNS", root)  # the committed table: commands without --out
    report = render.write_report(list(registry.ROWS.values()), root, tmp_path / "r.json", tmp_path / "r.md")
    times = {(t["row"], t["minutes"]): t for t in report["time_to_accuracy"]}
    assert (times[("maml_omniglot_5w1s", 30)]["test_acc"], times[("maml_omniglot_5w1s", 30)]["seeds"]) == (
        pytest.approx((3 * 0.94 + 0.96) / 4),
        4,
    )


def test_cpu_plans_use_the_calibrations_cpu_time_and_older_or_gpu_entries_wall_time():
    loaded = {
        "s_per_iteration": 3.0,
        "s_per_val_episode": 0.3,
        "cpu_s_per_iteration": 2.0,
        "cpu_s_per_val_episode": 0.2,
    }
    assert calibration.timing_of(loaded, "cpu:2cores:1threads") == planner.Timing(
        2.0, 0.2, "measured CPU time (cpu:2cores:1threads)"
    )
    two_threads = calibration.timing_of(loaded, "cpu:2cores:2threads")  # CPU seconds of 2 threads: not a wall time
    assert (two_threads.s_per_iteration, two_threads.s_per_val_episode) == (3.0, 0.3)
    gpu = calibration.timing_of(loaded, "gpu:NVIDIA H200")
    assert (gpu.s_per_iteration, gpu.s_per_val_episode) == (3.0, 0.3)
    older = {"s_per_iteration": 3.0, "s_per_val_episode": 0.3}
    assert calibration.timing_of(older, "cpu:2cores:1threads") == planner.Timing(
        3.0, 0.3, "measured (cpu:2cores:1threads)"
    )
    # a 30-min budget planned on CPU time holds more iterations than one planned on the loaded wall time
    wall = planner.plan_budget(OMNIGLOT, calibration.timing_of(loaded, "gpu:x"), 1800)
    cpu = planner.plan_budget(OMNIGLOT, calibration.timing_of(loaded, "cpu:2cores:1threads"), 1800)
    assert cpu.planned_iterations > wall.planned_iterations


def test_epoch_phases_split_where_msl_and_da_end():
    assert phases.epoch_phases(registry.ROWS["maml_omniglot_5w1s"]) == [
        phases.Phase(120)
    ]  # nothing changes MAML's cost
    mini = phases.epoch_phases(registry.ROWS["mamlpp_miniimagenet_5w1s"])  # MSL 15 of 100 epochs, DA off
    assert [(p.epochs, p.overrides) for p in mini] == [(15, ("algo.msl=true",)), (85, ("algo.msl=false",))]
    paper_text = compose_config([*registry.ROWS["mamlpp_omniglot_5w1s"].overrides, "algo.da_epochs=50"])
    assert [(p.epochs, p.overrides) for p in phases.phases_of(paper_text.algo, paper_text.trainer.max_epochs)] == [
        (10, ("algo.msl=true", "algo.da=true")),
        (40, ("algo.msl=false", "algo.da=true")),
        (50, ("algo.msl=false", "algo.da=false")),
    ]


def test_calibration_measures_each_phase_and_plans_on_their_epoch_weighted_cost(tmp_path, monkeypatch):
    """A calibration is one epoch, the first phase's: MAML++ mini-ImageNet's MSL epochs cost ~4x the rest,
    and a plan made of them alone trained 14 of its 60 minutes."""
    seen = []

    def fake_train(overrides, threads, log):
        msl = "algo.msl=true" in overrides
        seen.append(msl)
        out = Path(next(o for o in overrides if o.startswith("+callbacks.calibration.out=")).split("=", 1)[1])
        cost = 12.0 if msl else 3.0
        out.write_text(
            json.dumps(
                {
                    "s_per_iteration": cost + 1,
                    "s_per_val_episode": 1.0,
                    "cpu_s_per_iteration": cost,
                    "cpu_s_per_val_episode": 0.9,
                }
            )
        )

    monkeypatch.setattr(runner, "run_train", fake_train)
    store = tmp_path / "calibration.json"
    timing = calibration.calibrate(registry.ROWS["mamlpp_miniimagenet_5w1s"], "default", 1, force=True, store=store)
    assert seen == [True, False]
    assert timing.s_per_iteration == pytest.approx((15 * 12.0 + 85 * 3.0) / 100)  # CPU seconds, 1 thread
    assert timing.s_per_val_episode == pytest.approx(0.9)
    entry = json.loads(store.read_text())[f"cpu:{os.cpu_count()}cores:1threads"]["mamlpp_miniimagenet_5w1s"]
    assert [(p["epochs"], p["cpu_s_per_iteration"]) for p in entry["phases"]] == [(15, 12.0), (85, 3.0)]
    assert entry["s_per_iteration"] == pytest.approx((15 * 13.0 + 85 * 4.0) / 100)
    # the cached entry plans the same as the measurement
    assert (
        calibration.calibrate(registry.ROWS["mamlpp_miniimagenet_5w1s"], "default", 1, store=store) == timing
        and len(seen) == 2
    )
    calibration.calibrate(
        registry.ROWS["maml_omniglot_5w1s"], "default", 1, force=True, store=store
    )  # one phase: one run
    assert len(seen) == 3


def test_a_missed_target_states_the_speed_and_the_iterations_it_limits():
    thirty, ten = {"budget_min": 30}, {"budget_min": 10}
    summaries = {
        "maml_omniglot_5w1s": [
            {
                "row": "maml_omniglot_5w1s",
                "plan": thirty,
                "train_s": 600.0,
                "global_step": 400,
                "test": 0.93,
                "threads": 1,
            },
            {
                "row": "maml_omniglot_5w1s",
                "plan": thirty,
                "train_s": 600.0,
                "global_step": 400,
                "test": 0.95,
                "threads": 1,
            },
            {
                "row": "maml_omniglot_5w1s_10min",
                "plan": ten,
                "train_s": 500.0,
                "global_step": 250,
                "test": 0.92,
                "threads": 2,
            },
            {
                "row": "maml_omniglot_5w1s_30min",
                "plan": thirty,
                "train_s": 1500.0,
                "global_step": 500,
                "test": 0.96,
                "threads": 2,
            },
        ]
    }
    times = reporting.time_to_accuracy(summaries)
    (target,) = reporting.target_limits(summaries, times)
    # the speed is the 30-min time row's, the run behind the 30-min figure, not an average over every run
    assert target["reached"] is False and target["test_acc"] == pytest.approx(0.96)
    assert target["s_per_iteration"] == pytest.approx(3.0) and target["threads"] == 2
    assert target["iterations_in_budget"] == pytest.approx(600) and target["iterations_trained"] == 500
    assert target["hours_for_paper_iterations"] == pytest.approx(60_000 * 3.0 / 3600)
    assert [(p["run"], p["iterations"], p["seeds"]) for p in target["accuracy_by_iterations"]] == [
        ("maml_omniglot_5w1s_10min", 250, 1),
        ("maml_omniglot_5w1s", 400, 2),
        ("maml_omniglot_5w1s_30min", 500, 1),
    ]
    assert target["accuracy_by_iterations"][1]["test_acc"] == pytest.approx(0.94)
    text = render.render_markdown({"rows": [], "time_to_accuracy": [], "targets": [target]})
    assert (
        "not reached (96.00 %)" in text
        and "(2: the machine's rate) trained 500 meta-iterations" in text
        and "at 3.00 s each" in text
        and "50 h" in text
    )
    assert "94.00 % after 400 (maml_omniglot_5w1s, 2 seed(s)" in text
    # a table run planned on CPU seconds is behind the 30-min figure too; the speed stays the 2-thread run's
    for s in summaries["maml_omniglot_5w1s"][:2]:
        s["plan"] = {"budget_min": 30, "timing": "measured CPU time (cpu:2cores:1threads)"}
    times = reporting.time_to_accuracy(summaries)
    (target,) = reporting.target_limits(summaries, times)
    assert target["test_acc"] == pytest.approx((0.93 + 0.95 + 0.96) / 3)
    assert target["s_per_iteration"] == pytest.approx(3.0) and target["iterations_trained"] == 500
    assert reporting.target_limits({}, [])[0]["reached"] is None  # no run: nothing claimed


def test_calibration_timer_drops_the_warm_up_and_averages_per_episode(tmp_path, monkeypatch):
    wall = iter([0.0, 10.0, 10.0, 12.0, 12.0, 15.0, 20.0, 26.0, 26.0, 29.0])
    cpu = iter([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 10.0, 13.0, 13.0, 16.0])
    monkeypatch.setattr(calibration.time, "perf_counter", lambda: next(wall))
    monkeypatch.setattr(calibration.time, "process_time", lambda: next(cpu))
    timer = calibration.CalibrationTimer(str(tmp_path / "t.json"))
    for i in range(3):
        timer.on_train_batch_start(None, None, None, i)
        timer.on_train_batch_end(None, None, None, None, i)
    for i, episodes in enumerate([[0] * 4, [0] * 2]):  # a batch of 4 episodes, then 2
        timer.on_validation_batch_start(None, None, episodes, i)
        timer.on_validation_batch_end(None, None, None, episodes, i)
    timer.on_fit_end(None, None)
    out = json.loads((tmp_path / "t.json").read_text())
    assert out["iteration_times"] == [10.0, 2.0, 3.0]
    assert out["s_per_iteration"] == 2.5 and out["cpu_s_per_iteration"] == 1.5  # warm-up dropped
    assert out["s_per_val_episode"] == 1.5 and out["cpu_s_per_val_episode"] == 1.0  # 9 s and 6 s over 6 episodes


def test_outside_a_checkout_it_stops_before_writing(tmp_path, monkeypatch):
    """An installed copy has no train.py, conf/ or bench/results beside it: named, nothing written."""
    monkeypatch.setattr(locations, "REPO", tmp_path)
    monkeypatch.setattr(locations, "RUNS", tmp_path / "runs")
    with pytest.raises(SystemExit, match=f"{tmp_path} is not one \\(no train.py\\)"):
        cli.main(["--report-only"])
    assert list(tmp_path.iterdir()) == []


def test_the_table_says_whether_a_row_matches_the_reference_code(tmp_path):
    """The column "matches the reference code at equal iterations" comes from the row's parity comparison in
    parity.json: its verdict and the last compared iteration's difference with CI; rows without one say "–"."""
    import dataclasses
    import json

    from metaplus.reproduce.render import parity_cell
    from metaplus.reproduce.report import parity_record

    difference = {"iteration": 750, "seeds": {"metaplus": 3, "reference": 2}, "difference": -0.004}
    difference.update(ci_low=-0.021, ci_high=0.013)
    comparisons = {
        "ran": {"verdict": {"parity": True}, "difference": [{**difference, "iteration": 250}, difference]},
        "failed": {"verdict": {"parity": False}, "difference": [{**difference, "ci_high": -0.002}]},
        "waiting": {"verdict": {"parity": None}, "difference": []},
    }
    path = tmp_path / "parity.json"
    path.write_text(json.dumps({"comparisons": comparisons}))
    row = registry.ROWS["mamlpp_omniglot_5w1s"]
    assert row.parity == "mamlpp_omniglot_5w1s"  # the published rows name their comparison
    cells = {
        name: parity_cell({"parity": parity_record(dataclasses.replace(row, parity=name), path)})
        for name in ("ran", "failed", "waiting", "absent")
    }
    assert cells["ran"].startswith("yes at 750 iterations, 2 seeds: -0.40 [-2.10, +1.30]")
    assert cells["failed"].startswith("no at 750 iterations, 2 seeds: -0.40 [-2.10, -0.20]")
    assert cells["waiting"].startswith("not run yet") and cells["absent"].startswith("not run yet")
    assert parity_record(dataclasses.replace(row, parity=None), path) is None
    assert parity_cell({"parity": None}) == "–"
