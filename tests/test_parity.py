"""bench/parity.py's planning, statistics and report parts on fake curves (issue 25), and its early
failure when the reference code is absent. Nothing here trains: the harness's runs are proved by its
smoke run (docs/parity.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from metaplus.benchmarking import parity
from metaplus.benchmarking.reference_mamlpp import reference_layout


# -- the difference and its interval ------------------------------------------------------------------
def test_difference_ci_pairs_episodes_and_adds_the_seed_spread():
    ours = [[1, 0, 1, 1], [1, 1, 1, 0]]
    reference = [[0, 0, 1, 1], [1, 0, 1, 0]]
    point = parity.difference_ci(ours, reference)
    # seed-averaged per episode: ours [1, .5, 1, .5], reference [.5, 0, 1, .5] -> d = [.5, .5, 0, 0]
    half = 1.96 * math.sqrt((0.25 / 3) / 4)  # Var(d) / E; both codes' seed means agree (no seed part)
    assert point["difference"] == pytest.approx(0.25)
    assert point["ci_low"] == pytest.approx(0.25 - half) and point["ci_high"] == pytest.approx(0.25 + half)
    assert point["seed_variance_known"] and point["episodes"] == 4


def test_difference_ci_counts_the_spread_between_seeds():
    """Same per-episode averages for both codes, but metaplus's seeds disagree: the interval must widen."""
    point = parity.difference_ci([[1, 1], [0, 0]], [[0.5, 0.5], [0.5, 0.5]])
    assert point["difference"] == pytest.approx(0.0)
    assert point["ci_high"] == pytest.approx(1.96 * math.sqrt(0.5 / 2))  # Var(seed means) / seeds


def test_one_seed_is_said_to_leave_the_seed_part_unknown():
    point = parity.difference_ci([[1, 0, 1]], [[1, 1, 0]])
    assert not point["seed_variance_known"]
    assert "not estimated" in parity.verdict([{**point, "iteration": 5}])["text"]


def test_episodes_must_be_the_same_for_every_seed_and_code():
    with pytest.raises(ValueError, match="same episodes"):
        parity.difference_ci([[1, 0, 1], [1, 0]], [[1, 1, 0]])
    with pytest.raises(ValueError, match="the other code: 3"):
        parity.difference_ci([[1, 0, 1]], [[1, 1]])


# -- the verdict ----------------------------------------------------------------------------------------
def point(iteration, low, high, known=True):
    return {
        "iteration": iteration,
        "ci_low": low,
        "ci_high": high,
        "difference": (low + high) / 2,
        "seed_variance_known": known,
    }


def test_verdict_holds_when_every_interval_contains_zero_or_favours_metaplus():
    result = parity.verdict([point(250, -0.02, 0.01), point(500, 0.01, 0.04)])
    assert result["parity"] is True and result["failing_iterations"] == []


def test_verdict_fails_naming_each_iteration_where_metaplus_is_below():
    result = parity.verdict([point(250, -0.02, 0.01), point(500, -0.05, -0.01), point(750, -0.04, -0.001)])
    assert result["parity"] is False and result["failing_iterations"] == [500, 750]
    assert "500, 750" in result["text"]


def test_verdict_without_points_says_so():
    assert parity.verdict([])["parity"] is None


def test_curves_are_compared_at_the_iterations_every_seed_of_both_codes_evaluated():
    curves = {
        "metaplus": {0: {5: [1, 1], 10: [1, 0], 15: [1, 1]}, 1: {5: [0, 1], 10: [1, 1]}},
        "reference": {0: {5: [0, 0], 10: [1, 0], 15: [0, 0]}},
    }
    points = parity.compare_curves(curves)
    assert [p["iteration"] for p in points] == [5, 10]  # 15: metaplus seed 1 has not reached it
    assert points[0]["metaplus"]["mean"] == pytest.approx(0.75) and points[0]["reference"]["mean"] == 0
    assert points[0]["holds"] and points[0]["seeds"] == {"metaplus": 2, "reference": 1}


# -- resuming -------------------------------------------------------------------------------------------
SPEC = {"eval_every": 5, "val_episodes": 20, "test_episodes": 20, "seed": 0, "threads": 1}


def fake_run(tmp_path: Path, evaluated: list[int], tested: int | None = None, spec=SPEC) -> Path:
    run = tmp_path / "seed0"
    parity.write_json(run / "parity" / "spec.json", spec)
    for iteration in evaluated:
        parity.write_json(run / "parity" / f"val-{iteration:06d}.json", {"iteration": iteration, "episodes": [1.0]})
    if tested is not None:
        parity.write_json(run / "parity" / "test.json", {"iteration": tested})
    return run


def test_run_plan_new_continue_test_done(tmp_path):
    assert parity.run_plan(tmp_path / "absent", 10, SPEC) == "new"
    assert parity.run_plan(fake_run(tmp_path, [5, 10], tested=10), 20, SPEC) == "continue"
    assert parity.run_plan(fake_run(tmp_path, [5, 10, 15, 20]), 20, SPEC) == "test"  # tested at 10 only
    assert parity.run_plan(fake_run(tmp_path, [5, 10, 15, 20], tested=20), 20, SPEC) == "done"
    assert parity.run_plan(fake_run(tmp_path, [5, 10, 15, 20], tested=20), 10, SPEC) == "done"


def test_a_run_cannot_grow_under_other_evaluation_settings(tmp_path):
    run = fake_run(tmp_path, [5, 10])
    with pytest.raises(SystemExit, match="eval_every: 5 then, 10 now"):
        parity.run_plan(run, 20, {**SPEC, "eval_every": 10})


def test_only_the_best_reference_checkpoints_are_kept(tmp_path):
    folder = tmp_path / "checkpoints"
    for iteration, score in [(5, 0.5), (10, 0.7), (15, 0.6), (20, 0.4), (25, 0.8)]:
        parity.keep_top_checkpoints(folder, iteration, score, {"w": torch.zeros(1)}, keep=3)
    ranked = parity.ranked_checkpoints(folder)
    assert [(p.name.split("-")[0], s) for p, s in ranked] == [
        ("iter000025", 0.8),
        ("iter000010", 0.7),
        ("iter000015", 0.6),
    ]
    assert len(list(folder.iterdir())) == 3


def test_run_times_and_memory_are_gathered_over_resumed_invocations(tmp_path):
    run = tmp_path / "seed0"
    parity.write_json(
        run / "parity" / "timing-000000.json",
        {"s_per_iteration": 2.0, "cpu_s_per_iteration": 1.0, "iteration_times": [9.0, 2.0, 2.0]},
    )
    parity.write_json(
        run / "parity" / "timing-000003.json",
        {"s_per_iteration": 4.0, "cpu_s_per_iteration": 3.0, "iteration_times": [9.0, 4.0]},
    )
    parity.record_invocation(run, 1.5, 3)
    parity.record_invocation(run, 1.2, 5)
    loaded = parity.load_run(run)
    assert loaded["s_per_iteration"] == pytest.approx((2 * 2.0 + 1 * 4.0) / 3)  # weighted by timed iterations
    assert loaded["peak_rss_gb"] == 1.5


# -- the reference's data layout ----------------------------------------------------------------------------
def test_reference_layout_puts_class_i_in_row_i_with_its_own_images():
    ways, shots = 3, 2
    labels = torch.tensor([[2, 0, 1, 0, 2, 1]])
    images = labels.float().view(1, 6, 1, 1, 1).expand(1, 6, 1, 2, 2) * 10 + torch.arange(6).view(1, 6, 1, 1, 1)
    xs, xq, ys, yq = reference_layout(images, labels, images, labels, ways)
    assert xs.shape == (1, ways, shots, 1, 2, 2) and ys.tolist() == [[[0, 0], [1, 1], [2, 2]]]
    assert (xs[0, :, :, 0, 0, 0] // 10).tolist() == [[0, 0], [1, 1], [2, 2]]  # every image stays with its label
    assert xs[0, 0, :, 0, 0, 0].tolist() == [1, 3]  # stable: the class's examples keep their order


def test_reference_layout_refuses_unbalanced_episodes():
    labels = torch.tensor([[0, 0, 1]])
    with pytest.raises(ValueError, match="same number of examples"):
        reference_layout(torch.zeros(1, 3, 1, 2, 2), labels, torch.zeros(1, 3, 1, 2, 2), labels, 2)


# -- the command line and the reference's location --------------------------------------------------------
def test_missing_reference_fails_early_with_the_clone_command(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("METAPLUS_MAMLPP_REFERENCE", raising=False)
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as unset:
        parity.main(
            ["--comparison", "mamlpp_omniglot_5w1s", "--iterations", "10", "--eval-every", "5", "--out", str(out)]
        )
    message = str(unset.value.code)
    assert "METAPLUS_MAMLPP_REFERENCE" in message
    assert "git clone https://github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch" in message
    assert not out.exists()  # nothing half-written
    with pytest.raises(SystemExit) as wrong:
        parity.main(["--comparison", "maml_miniimagenet_l2l", "--reference", str(tmp_path), "--out", str(out)])
    assert str(tmp_path / "examples/vision/maml_miniimagenet.py") in str(wrong.value.code)
    assert "git clone https://github.com/learnables/learn2learn" in str(wrong.value.code)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--eval-every", "500"], "at most 250"),
        (["--eval-every", "30"], "must divide the 500"),
        (["--iterations", "12", "--eval-every", "5"], "multiple of --eval-every"),
        (["--seeds", "0"], "a count >= 1"),
        (["--codes", "metaplus,other"], "subset of"),
    ],
)
def test_bad_arguments_are_refused_naming_the_option(argv, message, capsys):
    with pytest.raises(SystemExit):
        parity.parse_args(["--comparison", "mamlpp_omniglot_5w1s", *argv])
    assert message in capsys.readouterr().err


def test_seeds_as_a_count_or_a_list():
    assert parity.seed_list("3") == [0, 1, 2]
    assert parity.seed_list("0,4") == [0, 4]


def test_report_names_no_path_of_this_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("METAPLUS_DATA", "/data/somewhere")
    text = parity.public(f"{tmp_path}/x/seed0 {parity.REPO}/bench /data/somewhere/omniglot", tmp_path)
    assert text == "<runs dir>/x/seed0 ./bench $METAPLUS_DATA/omniglot"


def test_markdown_lists_every_comparison_with_verdict_and_regenerate_command():
    record = {
        "name": "mamlpp_omniglot_5w1s",
        "title": "T",
        "target": "t",
        "notes": [],
        "reference": {"name": "R", "url": "u", "commit": "8696470", "config": "c"},
        "settings": [],
        "metaplus_overrides": [],
        "evaluation": {"val_episodes": 20},
        "difference": [
            {
                "iteration": 5,
                "metaplus": {"mean": 0.7, "ci95": 0.1, "seeds": 1},
                "reference": {"mean": 0.6, "ci95": 0.1, "seeds": 1},
                "difference": 0.1,
                "ci_low": -0.05,
                "ci_high": 0.25,
                "holds": True,
            }
        ],
        "final_test": {"metaplus": {}, "reference": {}},
        "cost": {"metaplus": {}, "reference": {}},
        "verdict": parity.verdict([point(5, -0.05, 0.25)]),
        "known_differences": ["d1"],
        "regenerate": "python bench/parity.py --comparison mamlpp_omniglot_5w1s",
    }
    text = parity.markdown([record], {}, smoke=True)
    assert "SMOKE RUN" in text and "parity holds" in text and "| 5 | 70.00 ± 10.00 | 60.00 ± 10.00 | +10.00" in text
    assert "python bench/parity.py --comparison mamlpp_omniglot_5w1s" in text and "- d1" in text


def test_metaplus_parameters_map_onto_the_reference_names():
    assert parity.reference_parameter("backbone.blocks.2.conv.weight") == (
        "classifier.layer_dict.conv2.conv.weight",
        None,
    )
    assert parity.reference_parameter("backbone.blocks.0.norm.bias")[0] == "classifier.layer_dict.conv0.norm_layer.bias"
    assert parity.reference_parameter("backbone.head.weight")[0] == "classifier.layer_dict.linear.weights"
    assert parity.reference_parameter("inner_lrs.blocks-3-conv-bias") == (
        "inner_loop_optimizer.names_learning_rates_dict.layer_dict-conv3-conv-bias",
        -1,
    )
    assert parity.reference_parameter("inner_lrs.head-weight")[0].endswith("layer_dict-linear-weights")
    with pytest.raises(KeyError, match="backbone.blocks.0.other"):
        parity.reference_parameter("backbone.blocks.0.other")


@pytest.mark.parametrize("seeds", [[0], [0, 1, 2], [4], [0, 4]])
def test_the_regenerate_command_names_the_same_seeds(seeds):
    assert parity.seed_list(parity.seeds_argument(seeds)) == seeds


# -- what the harness relies on in metaplus's own runs --------------------------------------------------
def test_recorder_keeps_per_episode_scores_at_every_validation_and_the_final_test(make_config, tmp_path):
    """A tiny metaplus run with the harness's overrides: validation every 2 iterations inside an epoch,
    stopped by max_steps at an evaluated iteration, per-episode scores written for each, the final test's
    too, and the iteration times; the episode indices are the fixed episodes 0..n-1."""
    from metaplus.run import run
    from metaplus.testing import QUICK

    out = tmp_path / "parity"
    cfg = make_config(
        [
            *QUICK,
            "algo=maml",
            "data=sinusoid",
            "data.batches_per_epoch=5",
            "trainer.max_epochs=2",
            "+trainer.max_steps=4",
            "+trainer.val_check_interval=2",
            "trainer=cpu",
            "+callbacks.parity._target_=metaplus.benchmarking.parity.ParityRecorder",
            f"+callbacks.parity.out={out}",
        ]
    )
    run(cfg)
    assert parity.evaluated_iterations(tmp_path) == [2, 4]
    record = json.loads((out / "val-000004.json").read_text())
    assert record["index"] == list(range(8)) and len(record["episodes"]) == 8
    assert len(json.loads((out / "test-best.json").read_text())["episodes"]) == 8
    assert len(json.loads((out / "timing-000000.json").read_text())["iteration_times"]) == 4


def test_the_reference_is_fed_the_training_batches_metaplus_trains_on(make_config):
    """training_batch(datamodule, t) is batch t % batches_per_epoch of epoch t // batches_per_epoch of
    metaplus's own train loader: the same episodes for both codes."""
    from types import SimpleNamespace

    from metaplus.config import instantiate_group

    cfg = make_config(["data=sinusoid", "data.batches_per_epoch=3", "data.meta_batch_size=2", "seed=5"])
    datamodule = instantiate_group(cfg.data, "data")
    datamodule.trainer = SimpleNamespace(current_epoch=1, world_size=1, state=SimpleNamespace(status=None))
    loaded = list(datamodule.train_dataloader())
    fed = parity.training_batch(datamodule, 3 + 2)  # epoch 1, batch 2
    assert torch.equal(fed.support_x, loaded[2].support_x) and torch.equal(fed.query_y, loaded[2].query_y)
    assert not torch.equal(parity.training_batch(datamodule, 2).support_x, fed.support_x)
