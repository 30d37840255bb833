"""Parity harness (issue 25): metaplus and a reference implementation trained side by side, at equal
meta-iterations, on the same data with the same settings, validated on the same fixed episodes.

    # the references are fetched outside the repository and never copied into it:
    git clone https://github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch $REFS/mamlpp   # METAPLUS_MAMLPP_REFERENCE
    python bench/parity.py --comparison mamlpp_omniglot_5w1s --iterations 2000 --eval-every 250 --seeds 3 \
        --out outputs/parity --publish          # rerun with a larger --iterations to continue every run
    python bench/parity.py --comparison mamlpp_omniglot_5w1s --out outputs/parity --report-only --publish
    git clone https://github.com/learnables/learn2learn $REFS/learn2learn          # METAPLUS_L2L_REFERENCE
    python bench/parity.py --comparison maml_miniimagenet_l2l --iterations 1000 --eval-every 250 --seeds 1 \
        --meta-batch 4 --out outputs/parity     # or its meta-batch 32 (no --meta-batch) for >= 200 iterations
    git clone https://github.com/dragen1860/MAML-Pytorch $REFS/dragen               # METAPLUS_DRAGEN_MAML_REFERENCE
    python bench/parity.py --comparison maml_omniglot_dragen --iterations 2000 --eval-every 250 --seeds 3 \
        --out outputs/parity

One row per comparison (``COMPARISONS``). For each (code, seed) a run directory
``<out>/<comparison>/<code>/seed<k>/`` keeps its checkpoints and curve; a rerun with a larger
``--iterations`` continues each run from its last state (metaplus: train.py's ``resume: auto``; the
reference: its network and optimizer state at the last evaluation), a run already there is skipped.
Choose ``--iterations`` as multiples of the 500 iterations of an epoch to make the continuation exact
(metaplus redraws the interrupted epoch's first tasks otherwise: metaplus.callbacks.PreemptionCheckpoint).

How the MAML++ comparisons are made equal (``mamlpp_*``):
* Data: the reference is fed metaplus's episodes (the issue allows adapting only the reference's data
  loading): training episode i of epoch e of seed k is the same episode (classes, drawings, rotations)
  for both codes, and validation and test episodes are the fixed ones of ``data.eval_seed``. Omniglot
  uses the reference's own class split (its data provider computes it: 1150/50/423 characters), written
  as the class-list files metaplus's Omniglot source reads (``data.split=vinyals`` reads whatever
  ``<data.root>/splits/vinyals/*.txt`` list); mini-ImageNet uses Ravi's split in both codes already.
  Pixels are metaplus's for both (see ``KNOWN_DIFFERENCES`` for the reference's own preprocessing).
* Settings: the reference runs its released config (experiment_config/*.json) with only ``seed`` (the
  initialisation seed) changed; metaplus runs ``algo=mamlpp data=<set>`` (the pair's preset) plus the
  overrides of ``metaplus_overrides``, each with its reason. ``settings_table`` compares every setting
  both codes have and refuses to start when one differs.
* Schedules: both keep the released 100 epochs x 500 iterations (MSL, cosine annealing and the epoch
  count of the ensemble's checkpoints are defined on it) and stop at ``--iterations``.
* Evaluation: every ``--eval-every`` iterations both codes score the same ``--val-episodes`` fixed
  validation episodes (5 inner steps, batch statistics); per-episode accuracies are kept. At the end,
  ``--test-episodes`` (600) fixed test episodes: the best validation checkpoint, and the top-5 ensemble
  of each code's own protocol (reference: mean of the logits, as its experiment_builder; metaplus: mean
  of the softmax probabilities).
* Cost: seconds per meta-iteration (wall and CPU, the first of each process dropped) and peak RSS of
  each code's process, measured in these same runs, with the same ``--threads``.

The two MAML comparisons (``maml_*``) drive their reference through a module each, which says what
it takes from the reference and what it adapts: reference_l2l.py (learn2learn's example: fed
metaplus's training episodes, like MAML++) and reference_dragen.py (dragen1860/MAML-Pytorch: trained on
its own sampler from an omniglot.npy the harness writes, metaplus reading the same class split). Both
run under ``reference_child``'s one loop (``reference_driver``); their settings are read from the
reference's files and checked the same way; ``--meta-batch`` runs both codes at a smaller meta-batch.

Statistics (``difference_ci``): at each evaluated iteration the difference metaplus - reference of the
mean validation accuracy, with a 95 % normal interval whose variance adds the episode part (the
per-episode paired differences of the seed-averaged accuracies, both codes scoring the same episodes)
and the seed part (the variance of each code's seed means over its seeds; unknown with one seed, then
counted as 0 and said so). Parity holds when every interval contains 0 or lies above it (``verdict``).

Outputs: ``<out>/parity.json``, ``<out>/parity.md`` and one plot per comparison in ``<out>``; with
``--publish`` also bench/results/parity.json, bench/results/parity_<comparison>.png and docs/parity.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

from metaplus.reproduce.calibration import CalibrationTimer

REPO = Path(__file__).resolve().parents[2]  # the checkout: train.py, conf/, bench/results/, docs/
MODULE = "metaplus.benchmarking.parity"  # the child processes run this module (python -m, from REPO)
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "parity.md"
DEFAULT_OUT = REPO / "outputs" / "parity"
CODES = ("metaplus", "reference")
META_BATCH_DRIVERS = ("l2l", "dragen")  # comparisons whose two codes may both run at a smaller meta-batch
STEP_CHECK_DRIVERS = ("mamlpp", "l2l", "dragen")  # comparisons with a same-weights one-step check (step_check)
Z95 = 1.96


@dataclass(frozen=True)
class Comparison:
    name: str
    title: str
    reference: str  # the reference's name as its authors publish it
    url: str
    env: str  # environment variable naming the reference's directory
    marker: str  # a file that proves the directory holds that code
    pair: tuple[str, ...]  # metaplus's preset pair (+ row) for this comparison
    reference_config: str | None = None  # the released config the reference runs
    driver_commit: str | None = None  # the reference commit the driver was written and smoke-run against
    omniglot_split: bool = False  # metaplus reads the reference's own Omniglot class split
    driver: str | None = None  # how the reference is run; None: not built yet
    target: str = ""  # the size for the full comparison
    full: tuple[int, int, int] = (2000, 250, 3)  # its --iterations, --eval-every, --seeds
    notes: tuple[str, ...] = field(default_factory=tuple)

    def clone_command(self) -> str:
        return f"git clone {self.url} <dir>  # then --reference <dir> or {self.env}=<dir>"


COMPARISONS = {
    c.name: c
    for c in [
        Comparison(
            "mamlpp_omniglot_5w1s",
            "MAML++ Omniglot 5-way 1-shot",
            "HowToTrainYourMAMLPytorch (Antoniou et al. 2019)",
            "https://github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch",
            "METAPLUS_MAMLPP_REFERENCE",
            "few_shot_learning_system.py",
            ("algo=mamlpp", "data=omniglot"),
            reference_config="omniglot_maml++-omniglot_1_8_0.1_64_5_0",
            omniglot_split=True,
            driver="mamlpp",
            target=">= 2,000 meta-iterations, 3 seeds",
        ),
        Comparison(
            "mamlpp_miniimagenet_5w1s",
            "MAML++ mini-ImageNet 5-way 1-shot",
            "HowToTrainYourMAMLPytorch (Antoniou et al. 2019)",
            "https://github.com/AntreasAntoniou/HowToTrainYourMAMLPytorch",
            "METAPLUS_MAMLPP_REFERENCE",
            "few_shot_learning_system.py",
            ("algo=mamlpp", "data=miniimagenet"),
            reference_config="mini-imagenet_maml++-mini-imagenet_1_2_0.01_48_5_0",
            driver="mamlpp",
            target=">= 1,000 meta-iterations (meta-batch 2), 1 seed (3 if the budget allows)",
            full=(1000, 250, 1),
        ),
        Comparison(
            "maml_miniimagenet_l2l",
            "MAML mini-ImageNet against learn2learn's example (its defaults: 5-way 5-shot)",
            "learn2learn examples/vision/maml_miniimagenet.py",
            "https://github.com/learnables/learn2learn",
            "METAPLUS_L2L_REFERENCE",
            "examples/vision/maml_miniimagenet.py",
            ("algo=maml", "data=miniimagenet"),
            driver="l2l",
            driver_commit="db5cee3",
            target="its defaults (meta-batch 32) for >= 200 iterations, or both at a smaller meta-batch "
            "(--meta-batch) for >= 1,000, stated",
            full=(200, 50, 1),
            notes=(
                "The example's main() defaults, read from its signature: 5-way 5-shot, 5 query images per "
                "class (2*shots images split in halves), 1 adaptation step in training and evaluation, inner "
                "lr 0.5, second order, Adam 0.003 (constant), meta-batch 32, MiniImagenetCNN (CNN4: 64 "
                "filters, Xavier init, BN weights U(0, 1)), 60,000 iterations. It validates on 32 random "
                "tasks per iteration and tests on 32 random tasks; the harness evaluates both codes on the "
                "same fixed episodes instead (--val-episodes / --test-episodes).",
                "Driver: metaplus/benchmarking/reference_l2l.py. Smoke run only so far (4 iterations, "
                "meta-batch 2, 4 episodes, 1 thread: both codes trained, were evaluated and compared; "
                "bench/results/parity_smoke_drivers.md); the target size has not run yet. Its same-weights "
                "one-step check (metaplus's initial weights copied into the reference, meta-batch 2): "
                "meta-loss, every meta-gradient and the adapted validation losses of the two codes were identical.",
            ),
        ),
        Comparison(
            "maml_omniglot_dragen",
            "MAML Omniglot 5-way 1-shot against dragen1860/MAML-Pytorch",
            "dragen1860/MAML-Pytorch omniglot_train.py",
            "https://github.com/dragen1860/MAML-Pytorch",
            "METAPLUS_DRAGEN_MAML_REFERENCE",
            "omniglot_train.py",
            ("algo=maml", "data=omniglot"),
            driver="dragen",
            driver_commit="98a00d4",
            target=">= 2,000 meta-iterations, 3 seeds",
            notes=(
                "Its omniglot_train.py defaults (read from its argparse calls): 5-way 1-shot, 15 queries, "
                "meta-batch 32, 5 inner steps of 0.4 (10 at test), Adam 1e-3, 40,000 steps; its strided "
                "Conv-4 (3x3 stride-2 unpadded convs, the last 2x2, ReLU before BN, no max-pool), which "
                "metaplus runs as model=strided_conv4. Its meta-gradient is first order (inner gradients "
                "without create_graph): metaplus runs algo.first_order=true. It trains on its own "
                "OmniglotNShot episodes from an omniglot.npy the harness writes from the shared archives "
                "(metaplus's pixels); the first 1,200 characters train both codes, the other 423 (its test "
                "set; it has no validation set) give the fixed validation and test episodes of both.",
                "Driver: metaplus/benchmarking/reference_dragen.py. Smoke run only so far (4 iterations, then resumed to 6, "
                "meta-batch 2, 4 episodes, 1 thread: both codes trained, were evaluated and compared; "
                "bench/results/parity_smoke_drivers.md); the target size has not run yet. Its same-weights "
                "one-step check (metaplus's initial weights copied into the reference, meta-batch 2): "
                "every meta-gradient and the training query accuracy of the two codes were identical, the "
                "validation accuracies equal to 1e-8.",
            ),
        ),
    ]
}

# Found by reading both codes (bench/reference_mamlpp.py names the reference's files); the harness
# removes the ones marked "harness:", the others are part of what the comparison measures.
KNOWN_DIFFERENCES = {
    "mamlpp": [
        "harness: Omniglot pixels. The reference opens the 1-bit PNGs and resizes them to 28x28 in mode '1', "
        "which Pillow does with nearest neighbour whatever filter is asked (LANCZOS): binary 0/1 images, "
        "paper 1, strokes 0, not normalised. metaplus converts to grey, resizes with Lanczos (anti-aliased) "
        "and inverts (strokes 1). The harness feeds both codes metaplus's pixels.",
        "harness: Omniglot class split. The reference shuffles all 1,623 characters (background and evaluation) "
        "and cuts 1150/50/423 (no rotation classes); metaplus's preset reads Vinyals' 1028/172/423 characters "
        "with every rotation a class (x4) and, with the preset's augment_rotations, rotates those again. "
        "The harness makes metaplus read the reference's split.",
        "harness: episode sampling. The reference draws episodes with numpy seeds (train_seed + iteration), "
        "validation and test from the same seed sequence (val_seed) on different classes; the harness feeds "
        "it metaplus's episodes.",
        "harness: validation schedule. The reference validates on 600 tasks at each epoch end (every 500 "
        "iterations) and ensembles the top 5 of those epoch checkpoints; the harness validates both every "
        "--eval-every iterations and ensembles the top 5 of those evaluations.",
        "seeds: the released configs set no 'seed', so every released run initialises from seed 104 and only "
        "train_seed (0, 1, 2) differs between the three released runs; the harness sets seed=k (the "
        "initialisation) and feeds seed k's training episodes to both codes.",
        "ensemble: the reference averages the top-5 checkpoints' logits (experiment_builder: np.mean of "
        "per_task_target_preds, the raw classifier outputs); metaplus averages softmax probabilities.",
        "LSLR: the reference keeps N+1 learning rates per tensor (the last never used, so Adam never moves "
        "it); metaplus keeps N. Both start at task_learning_rate=0.1 (the configs' init_inner_loop_learning_"
        "rate is never read by the reference, 0.01 on mini-ImageNet).",
        "meta-gradient clamp (mini-ImageNet): the reference clamps the classifier's gradients to [-10, 10] "
        "only ('imagenet' in dataset_name), not those of the LSLR rates; metaplus's grad_clip_value=10 "
        "clamps every parameter's, the learned rates included.",
        "outer loss: the reference backpropagates the mean of the meta-batch's losses once (every task's "
        "graph held at once); metaplus backpropagates each task's share in turn (same gradient, less "
        "memory).",
        "BN running statistics: the reference updates its per-step running statistics in every forward "
        "pass, evaluation included (restored after each evaluation task); with batch statistics "
        "(bn_stats=batch in metaplus) they never change an output in either code.",
        "outer learning-rate schedule: both cosine-anneal per epoch over 100 epochs (reference: "
        "CosineAnnealingLR.step(epoch=int(iteration / 500)) at every iteration; metaplus: LambdaLR stepped "
        "at each epoch end): the same rate in every iteration.",
    ],
    "l2l": [
        "harness: data. The example reads learn2learn's mini-ImageNet pickles through get_tasksets (pixels as "
        "raw 0-255 floats, not normalised; tasks drawn with Python's random); the harness feeds it metaplus's "
        "episodes from the same folder metaplus reads (ImageNet mean/std normalised): training meta-batch t "
        "of seed k is the same episodes for both codes. (The pixel scale matters little: the first "
        "convolution is followed by batch norm with batch statistics, which removes a per-channel scale "
        "and shift of its output; ImageNet's three stds differ by under 2 %.)",
        "harness: evaluation. The example 'meta-validates' on 32 random validation tasks at every iteration "
        "(printed only, never used for training) and tests once on 32 random test tasks; the harness "
        "evaluates both codes on the same fixed validation episodes every --eval-every iterations and on "
        "--test-episodes fixed test episodes with each code's best validation checkpoint. Its per-iteration "
        "meta-validation is not run, so its cost (one more adaptation per task) is not in the reference's "
        "s/iteration.",
        "harness: meta-batch. --meta-batch N runs both codes at N tasks per iteration instead of the "
        "example's 32 (stated in the settings table).",
        "seeds: main() seeds random, numpy and torch with 42 in every run; the harness seeds torch with k "
        "(the initialisation) and feeds seed k's training episodes to both codes.",
        "BN weight initialisation: CNN4's ConvBlock draws every BN weight from U(0, 1) "
        "(torch.nn.init.uniform_); metaplus's Conv-4 starts them at 1. Not removed: part of what is compared.",
        "BN running statistics: CNN4's BatchNorm2d tracks running statistics, never used (the example never "
        "calls eval(): batch statistics always); metaplus (bn_stats=batch) keeps none. No output differs.",
        "library: the example's learn2learn is the installed 0.2.0 (the set-up's rebuild for Python >= "
        "3.11); its vision/models/cnn4.py, algorithms/maml.py and the mini-ImageNet dataset and benchmark "
        "files are identical to the reference commit's (only utils.flatten_config differs, unused here).",
        "outer loss: both average the tasks' query losses (the example: backward per task, gradients scaled "
        "by 1/meta-batch; metaplus: each task's share in turn): the same gradient.",
    ],
    "dragen": [
        "harness: omniglot.npy. OmniglotNShot builds it from images it downloads: "
        "Image.open().convert('L').resize((28, 28)) with Pillow's default filter, x/255 and not inverted "
        "(paper 1, strokes 0), characters in os.walk order of its extracted folders (which 1,200 train depends "
        "on the file system). The harness writes it with metaplus's pixels (Lanczos, inverted, x/255) and "
        "metaplus's character order (images_background, then images_evaluation, each sorted), and metaplus "
        "reads the same split: the first 1,200 characters train, the other 423 validate and test.",
        "harness: evaluation. The reference has no validation set: every 500 steps it tests on 1,000 random "
        "tasks of its 423 test characters. The harness evaluates both codes every --eval-every iterations on "
        "the same fixed validation episodes of those 423 characters, and tests each code's best validation "
        "checkpoint on other fixed episodes of the same characters (the checkpoint choice has seen those "
        "characters: the test figure is optimistic for both codes alike).",
        "training episodes: each code draws its own training episodes from the same 1,200 characters (the "
        "reference: OmniglotNShot's numpy sampler, 10 meta-batches cached at a time; metaplus: its seeded "
        "sampler): the same distribution, not the same episodes.",
        "seeds: omniglot_train.py seeds torch and numpy with 222 in every run; the harness seeds both with k.",
        "first order: Meta.forward takes the inner gradients without create_graph, so its meta-gradient is "
        "first order although the code is called MAML; metaplus runs algo.first_order=true to match (the "
        "same-weights check: identical meta-gradients so; with algo.first_order=false the largest difference "
        "was 3.7e4 times that gradient's size, block 0's conv bias).",
        "BN running statistics: its Learner updates running statistics in every forward pass (bn_training=True "
        "always, finetunning on a deep copy), never used to normalise; metaplus (bn_stats=batch) keeps none.",
        "outer loss: the reference backpropagates the mean of the meta-batch's last-step query losses once "
        "(every task's graph held at once); metaplus backpropagates each task's share in turn (same gradient).",
        "numpy: its data code uses np.int/np.float, removed in numpy 1.24; the harness's child process "
        "restores them as the builtins they aliased before importing it (no file of the reference changes).",
    ],
}


# -- where the reference is -------------------------------------------------------------------------
def reference_dir(comparison: Comparison, given: str | os.PathLike | None) -> Path:
    """The reference's directory (``--reference``, else ``$<comparison.env>``); SystemExit naming where
    it looked and the clone command when it is not there."""
    where = given if given is not None else os.environ.get(comparison.env)
    if where is None:
        problem = f"neither --reference nor {comparison.env} is set"
    elif not (Path(where) / comparison.marker).is_file():
        problem = f"{Path(where) / comparison.marker} not found"
    else:
        return Path(where).resolve()
    sys.exit(
        f"parity {comparison.name}: the reference code ({comparison.reference}) is needed: {problem}. "
        f"Get it outside this repository with:\n  {comparison.clone_command()}"
    )


def reference_commit(code: Path) -> str | None:
    from metaplus.benchmarking.reference_mamlpp import code_commit

    return code_commit(code)


# -- statistics ---------------------------------------------------------------------------------------
def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _variance(values: Sequence[float]) -> float:
    return statistics.variance(values) if len(values) > 1 else 0.0


def check_scores(code: str, runs: Sequence[Sequence[float]], episodes: int | None = None) -> int:
    """Every seed of ``code`` scored the same number of episodes; returns it."""
    if not runs:
        raise ValueError(f"{code}: no seed was evaluated")
    sizes = {len(r) for r in runs}
    if len(sizes) != 1 or 0 in sizes or (episodes is not None and sizes != {episodes}):
        raise ValueError(
            f"{code}: every seed must score the same episodes, got {sorted(sizes)} episodes"
            + (f" (the other code: {episodes})" if episodes is not None else "")
        )
    return sizes.pop()


def code_summary(runs: Sequence[Sequence[float]]) -> dict[str, float]:
    """One code's mean over its seeds and the shared episodes, with the 95 % half-width of the same
    two parts as :func:`difference_ci` (episodes: seed-averaged scores; seeds: the seed means)."""
    episodes = check_scores("code", runs)
    per_episode = [_mean([r[e] for r in runs]) for e in range(episodes)]
    seed_means = [_mean(r) for r in runs]
    variance = _variance(per_episode) / episodes + _variance(seed_means) / len(runs)
    return {"mean": _mean(per_episode), "ci95": Z95 * math.sqrt(variance), "seeds": len(runs)}


def difference_ci(ours: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> dict[str, Any]:
    """metaplus - reference at one evaluated iteration, from ``ours[seed][episode]`` and
    ``reference[seed][episode]``: per-episode scores of each seed on the SAME episodes, in the same order.

    The difference of the means has variance (episode part) Var_e(d_e) / E, with d_e the difference of
    the seed-averaged scores on episode e (paired: both codes score the same episodes, so how hard an
    episode is cancels), plus (seed part) each code's variance of its seed means over its seed count.
    A code with one seed contributes no seed part (``seed_variance_known`` false)."""
    episodes = check_scores("metaplus", ours)
    check_scores("reference", reference, episodes)
    d = [_mean([r[e] for r in ours]) - _mean([r[e] for r in reference]) for e in range(episodes)]
    episode_part = _variance(d) / episodes
    seed_part = sum(_variance([_mean(r) for r in runs]) / len(runs) for runs in (ours, reference))
    diff, half = _mean(d), Z95 * math.sqrt(episode_part + seed_part)
    return {
        "difference": diff,
        "ci_low": diff - half,
        "ci_high": diff + half,
        "episodes": episodes,
        "seeds": {"metaplus": len(ours), "reference": len(reference)},
        "seed_variance_known": len(ours) > 1 and len(reference) > 1,
    }


def holds(point: dict[str, Any]) -> bool:
    """A difference interval that contains 0 or lies above it (metaplus at least as accurate)."""
    return point["ci_high"] >= 0.0


def verdict(points: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Parity holds when it holds at every evaluated iteration."""
    if not points:
        return {"parity": None, "text": "no iteration was evaluated by both codes yet"}
    failing = [p["iteration"] for p in points if not holds(p)]
    seeds_known = all(p["seed_variance_known"] for p in points)
    caveat = "" if seeds_known else " (a code has one seed: the seed part of the interval is not estimated)"
    if failing:
        return {
            "parity": False,
            "failing_iterations": failing,
            "text": f"parity does not hold: metaplus is below the reference beyond the 95 % interval at "
            f"iteration(s) {', '.join(map(str, failing))}{caveat}",
        }
    return {
        "parity": True,
        "failing_iterations": [],
        "text": f"parity holds at all {len(points)} evaluated iterations (every 95 % interval of metaplus - "
        f"reference contains 0 or favours metaplus){caveat}",
    }


def compare_curves(curves: dict[str, dict[int, dict[int, list[float]]]]) -> list[dict[str, Any]]:
    """``curves[code][seed][iteration]`` = per-episode scores -> one difference point per iteration that
    every seed of both codes evaluated."""
    common = None
    for code in CODES:
        for per_iteration in curves.get(code, {}).values():
            common = set(per_iteration) if common is None else common & set(per_iteration)
    points = []
    for iteration in sorted(common or ()):
        ours = [c[iteration] for c in curves["metaplus"].values()]
        theirs = [c[iteration] for c in curves["reference"].values()]
        point = {
            "iteration": iteration,
            "metaplus": code_summary(ours),
            "reference": code_summary(theirs),
            **difference_ci(ours, theirs),
        }
        point["holds"] = holds(point)
        points.append(point)
    return points


# -- what a (code, seed) run has done, and what it still needs -------------------------------------------
def evaluated_iterations(run: Path) -> list[int]:
    return sorted(int(p.stem.split("-")[1]) for p in (run / "parity").glob("val-*.json"))


def tested_iteration(run: Path) -> int | None:
    path = run / "parity" / "test.json"
    return json.loads(path.read_text())["iteration"] if path.is_file() else None


def run_plan(run: Path, iterations: int, spec: dict[str, Any]) -> str:
    """What one (code, seed) run needs for ``iterations``: "new", "continue" (train on from its last
    evaluation), "test" (trained that far, the final test missing) or "done". A run started with
    other evaluation settings cannot grow: its curve would mix them (SystemExit naming both)."""
    spec_file = run / "parity" / "spec.json"
    if not spec_file.is_file():
        return "new"
    before = json.loads(spec_file.read_text())
    fixed = ("eval_every", "val_episodes", "test_episodes", "seed", "threads", "meta_batch")
    changed = {k: (before.get(k), spec.get(k)) for k in fixed if before.get(k) != spec.get(k)}
    if changed:
        sys.exit(
            f"parity: {run} was started with other settings ("
            + ", ".join(f"{k}: {a} then, {b} now" for k, (a, b) in changed.items())
            + "); rerun with its settings or another --out"
        )
    done = max(evaluated_iterations(run), default=0)
    if done < iterations:
        return "continue" if done else "new"
    return "done" if tested_iteration(run) == done else "test"


# -- metaplus -------------------------------------------------------------------------------------------
class ParityRecorder(CalibrationTimer):
    """Added to metaplus's run by the harness (``+callbacks.parity``): at every validation during fit,
    the per-episode accuracy after the last inner step (``<out>/val-<iteration>.json``); after the final
    test of the best checkpoint, its per-episode accuracies (``test-best.json``); and the per-iteration
    wall and CPU times of this process (``timing-<first iteration>.json``, CalibrationTimer's)."""

    def __init__(self, out: str):
        Path(out).mkdir(parents=True, exist_ok=True)
        super().__init__(str(Path(out) / "timing.json"))
        self.folder = Path(out)

    def on_train_start(self, trainer, pl_module):
        self.out = self.folder / f"timing-{trainer.global_step:06d}.json"

    def on_fit_end(self, trainer, pl_module):
        if self.durations:  # a rerun that only tests (already trained that far) times nothing
            super().on_fit_end(trainer, pl_module)

    def episodes(self, pl_module, stage: str) -> dict[str, list]:
        index, _, values = pl_module.episode_curves[stage].compute()  # before the module's hook resets it
        return {"index": index.tolist(), "episodes": values[:, -1].tolist()}

    def on_validation_epoch_end(self, trainer, pl_module):
        from lightning.pytorch.trainer.states import TrainerFn

        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            record = {"iteration": trainer.global_step, **self.episodes(pl_module, "val")}
            write_json(self.folder / f"val-{trainer.global_step:06d}.json", record)

    def on_test_epoch_end(self, trainer, pl_module):
        write_json(
            self.folder / "test-best.json", {"iteration": trainer.global_step, **self.episodes(pl_module, "test")}
        )


def write_json(path: Path, data: Any) -> None:
    """Written whole or not at all (a killed run leaves the previous file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


def metaplus_overrides(
    comparison: Comparison, seed: int, a: argparse.Namespace, run: Path, data_root: Path | None
) -> list[str]:
    """``python train.py`` for one seed: the comparison's preset pair plus what the harness needs, each
    with its reason. Nothing else: every other value is the preset's (checked by settings_table)."""
    overrides = [*comparison.pair, f"seed={seed}", *driver_overrides(comparison)]
    if getattr(a, "meta_batch", None):  # both codes at a smaller meta-batch (stated in the settings table)
        overrides = [o for o in overrides if not o.startswith("data.meta_batch_size=")]
        overrides.append(f"data.meta_batch_size={a.meta_batch}")
    if data_root is not None:  # the reference's class split, in the class-list files the source reads
        overrides += [f"data.root={data_root}", "data.split=vinyals"]
    overrides += [
        f"data.val_episodes={a.val_episodes}",  # the reference validates on 600 tasks
        f"data.test_episodes={a.test_episodes}",  # the protocol's 600
        f"+trainer.max_steps={a.iterations}",  # stop at the budget; the 100-epoch schedules stay
        f"+trainer.val_check_interval={a.eval_every}",  # validate every N iterations (the reference: 500)
        "trainer=cpu",  # the reference runs on the CPU here
        "logger=csv",
        "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",  # quiet logs
        "+callbacks.parity._target_=metaplus.benchmarking.parity.ParityRecorder",  # per-episode scores and timings
        f"+callbacks.parity.out={run / 'parity'}",
        f"hydra.run.dir={run}",  # one resumable directory per seed (resume: auto)
    ]
    return overrides


def driver_overrides(comparison: Comparison) -> list[str]:
    """The metaplus settings that make it the comparison's reference algorithm (their reasons are beside
    them in the driver's module); MAML++'s pair preset is already its released setting."""
    if comparison.driver == "l2l":
        from metaplus.benchmarking.reference_l2l import METAPLUS_OVERRIDES
    elif comparison.driver == "dragen":
        from metaplus.benchmarking.reference_dragen import METAPLUS_OVERRIDES
    else:
        return []
    return list(METAPLUS_OVERRIDES)


def prepare_data(comparison: Comparison, code: Path, out: Path) -> Path | None:
    """metaplus's data root for the comparison: for Omniglot, a folder beside the runs with links to the
    official archives and the reference's split as class-list files. MAML++: the split its own data
    provider computes (once, kept in reference_split.json); dragen: the split of the omniglot.npy the
    harness writes for it (``<out>/<comparison>/data/dragen_npy``, kept in reference_split.json too)."""
    if not (comparison.omniglot_split or comparison.driver == "dragen"):
        return None
    data = Path(os.environ.get("METAPLUS_DATA", REPO.parent / "shared" / "data")) / "omniglot"
    root = out / comparison.name / "data" / "omniglot"
    split_json = out / comparison.name / "reference_split.json"
    (root / "splits" / "vinyals").mkdir(parents=True, exist_ok=True)
    for part in ("images_background", "images_evaluation"):
        link, target = root / f"{part}.zip", (data / f"{part}.zip").resolve()
        if not target.is_file():
            sys.exit(
                f"parity: {target} not found: the official Omniglot archives are read from $METAPLUS_DATA/omniglot"
            )
        if not link.exists():
            link.symlink_to(target)
    if not split_json.is_file() or (
        comparison.driver == "dragen" and not (root.parent / "dragen_npy" / "omniglot.npy").is_file()
    ):
        if comparison.driver == "dragen":
            from metaplus.benchmarking.reference_dragen import write_omniglot_npy
            from metaplus.compose import compose_config

            cache_dir = compose_config(["data=omniglot"]).data.cache_dir
            split = write_omniglot_npy(root, cache_dir, root.parent / "dragen_npy")
        else:
            from metaplus.benchmarking.reference_mamlpp import reference_omniglot_split

            work = out / comparison.name / "reference_split_work"
            split = reference_omniglot_split(code, data, work, comparison.reference_config)
            shutil.rmtree(work, ignore_errors=True)
        write_json(split_json, split)
    split = json.loads(split_json.read_text())
    for name, characters in split.items():
        (root / "splits" / "vinyals" / f"{name}.txt").write_text("".join(f"{c}/rot000\n" for c in characters))
    return root


# -- running one (code, seed) ------------------------------------------------------------------------------
def run_logged(command: list[str], log: Path, env: dict[str, str]) -> float:
    """Run ``command`` from the repository root, its output appended to ``log``; return its peak RSS in
    GB (the child's own high-water mark, read by the parent with ``os.wait4``). Unlike
    bench/memory.py's run_measured, nothing is piped, so a long, talkative run cannot block."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        proc = subprocess.Popen(command, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise RuntimeError(
            f"{' '.join(command[:3])} ... failed (exit {code}); its log ends:\n{log.read_text()[-3000:]}"
        )
    return round(usage.ru_maxrss / 1024**2, 3)


def record_invocation(run: Path, peak_rss_gb: float, iterations: int) -> None:
    path = run / "parity" / "invocations.json"
    seen = json.loads(path.read_text()) if path.is_file() else []
    write_json(path, [*seen, {"iterations": iterations, "peak_rss_gb": peak_rss_gb, "finished": time.time()}])


def run_one(
    code_name: str,
    comparison: Comparison,
    seed: int,
    a: argparse.Namespace,
    code: Path,
    data_root: Path | None,
    out: Path,
) -> str:
    from metaplus.reproduce.runner import run_env

    run = out / comparison.name / code_name / f"seed{seed}"
    spec = {
        "comparison": comparison.name,
        "code": code_name,
        "seed": seed,
        "iterations": a.iterations,
        "eval_every": a.eval_every,
        "val_episodes": a.val_episodes,
        "test_episodes": a.test_episodes,
        "threads": a.threads,
        "reference_config": comparison.reference_config,
        **({"meta_batch": a.meta_batch} if a.meta_batch else {}),
    }
    state = run_plan(run, a.iterations, spec)
    if state == "done":
        print(f"  {code_name} seed {seed}: done at {a.iterations} iterations, skipped", flush=True)
        return state
    overrides = metaplus_overrides(comparison, seed, a, run, data_root)
    write_json(
        run / "parity" / "spec.json",
        {**spec, "metaplus_overrides": overrides, "reference_dir": str(code), "data_root": str(data_root)},
    )
    if code_name == "metaplus":
        command = [sys.executable, "train.py", *overrides]
    else:
        command = [sys.executable, "-m", MODULE, "--child-reference", str(run / "parity" / "spec.json")]
    print(f"  {code_name} seed {seed}: {state} -> {a.iterations} iterations ({a.threads} thread(s))", flush=True)
    peak = run_logged(command, run / "stdout.log", run_env(a.threads))
    record_invocation(run, peak, a.iterations)
    if code_name == "metaplus":  # run.py tested the best checkpoint and the ensemble: keep its figures
        results = json.loads((run / "results.json").read_text())
        write_json(run / "parity" / "test.json", metaplus_test(results, run))
    return state


def metaplus_test(results: dict[str, Any], run: Path) -> dict[str, Any]:
    best = run / "parity" / "test-best.json"
    return {
        "iteration": results["global_step"],
        "acc": results.get("test/acc"),
        "ci95": results.get("test/acc_ci95"),
        "episodes": json.loads(best.read_text())["episodes"] if best.is_file() else None,
        "ensemble_acc": results.get("test/acc_ensemble"),
        "ensemble_ci95": results.get("test/acc_ensemble_ci95"),
        "ensemble_rule": "mean of softmax probabilities",
        "ensemble_checkpoints": results.get("test/ensemble_checkpoints"),
    }


# -- the reference, in a child process -------------------------------------------------------------------
class MamlppDriver:
    """The MAML++ reference's MAMLFewShotClassifier (unchanged), trained on metaplus's episodes as its
    experiment_builder does: ``run_train_iter(batch, epoch=iteration / total_iter_per_epoch)``; evaluated
    with ``run_validation_iter``; the top ``max_models_to_save`` checkpoints make its ensemble (mean of
    the logits)."""

    ensemble_rule = "mean of logits (its experiment_builder)"

    def __init__(self, code: Path, spec: dict, cfg, datamodule):
        from metaplus.benchmarking import reference_mamlpp as ref

        self.ref, self.datamodule, self.ways = ref, datamodule, cfg.data.ways
        self.args = ref.released_args(code, spec["reference_config"], seed=spec["seed"])
        self.model = ref.build_model(self.args)
        self.keep = self.args.max_models_to_save

    def layout(self, batch):
        return self.ref.reference_layout(batch.support_x, batch.support_y, batch.query_x, batch.query_y, self.ways)

    def batch(self, iteration: int):
        return self.layout(training_batch(self.datamodule, iteration))

    def train_step(self, data, iteration: int):
        with contextlib.redirect_stdout(sys.stderr):
            losses, _ = self.model.run_train_iter(data_batch=data, epoch=iteration / self.args.total_iter_per_epoch)
        return losses["loss"]  # a tensor: read only when printed, as before

    def evaluate(self, batch) -> list[tuple[float, Any]]:
        data = self.layout(batch)
        return [
            (float((logits.argmax(1) == y.reshape(-1)).mean()), logits)
            for logits, y in zip(self.ref.episode_predictions(self.model, data), data[3])
        ]

    def state(self) -> dict:
        return self.ref.state_of(self.model)

    def load(self, state: dict) -> None:
        self.ref.load_state(self.model, state)


def reference_driver(comparison: Comparison, code: Path, spec: dict, cfg, datamodule):
    """The comparison's reference code, built for one seed: an object with ``batch(iteration)`` (the
    training meta-batch it trains on), ``train_step(batch, iteration)`` (one meta-iteration of its own
    code; its loss, a number or tensor), ``evaluate(batch of episodes)`` ([(accuracy, logits or None)] per episode),
    ``state()`` / ``load(state)``, ``keep`` (checkpoints kept: its ensemble's size, 1 = the best only)
    and ``ensemble_rule``."""
    if comparison.driver == "l2l":
        from metaplus.benchmarking.reference_l2l import ExampleDriver

        return ExampleDriver(code, spec, cfg, datamodule)
    if comparison.driver == "dragen":
        from metaplus.benchmarking.reference_dragen import DragenDriver

        return DragenDriver(code, spec, cfg, datamodule)
    return MamlppDriver(code, spec, cfg, datamodule)


def load_reference_code(comparison: Comparison, code: Path, threads: int) -> None:
    """Before the reference is imported: CPU only, ``threads`` threads, its directory importable."""
    if comparison.driver == "l2l":
        from metaplus.benchmarking.reference_l2l import load
    elif comparison.driver == "dragen":
        from metaplus.benchmarking.reference_dragen import load
    else:
        from metaplus.benchmarking.reference_mamlpp import load_reference as load
    load(code, threads)


def reference_child(spec_path: Path) -> None:
    """Train the reference (its own code, unchanged, through ``reference_driver``) one meta-iteration at
    a time; every ``eval_every`` iterations score the fixed validation episodes, keep the checkpoint
    among the top ``driver.keep`` and the state for continuing; at the end the fixed test episodes (the
    best checkpoint, and with more than one kept, the reference's ensemble: the mean of their logits)."""
    spec = json.loads(spec_path.read_text())
    code, run = Path(spec["reference_dir"]), spec_path.parent.parent
    comparison = COMPARISONS[spec["comparison"]]
    load_reference_code(comparison, code, spec["threads"])
    import torch

    from metaplus.compose import compose_config as compose
    from metaplus.config import instantiate_group

    cfg = compose([o for o in spec["metaplus_overrides"] if not o.startswith(("hydra.", "+callbacks.parity"))])
    datamodule = instantiate_group(cfg.data, "data")
    driver = reference_driver(comparison, code, spec, cfg, datamodule)
    latest, folder = run / "latest.pt", run / "parity"
    start = 0
    if latest.is_file():
        state = torch.load(latest, map_location="cpu")
        driver.load(state)
        start = state["iteration"]

    def scores(batches):
        """Per-episode accuracies (and logits, where the reference gives them) on fixed episodes."""
        scored = [s for batch in batches for s in driver.evaluate(batch)]
        return [a for a, _ in scored], [logits for _, logits in scored]

    walls, cpus = [], []
    for t in range(start, spec["iterations"]):
        data = driver.batch(t)
        w0, c0 = time.perf_counter(), time.process_time()
        loss = driver.train_step(data, t)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
        if (t + 1) % spec["eval_every"] == 0:
            accuracies, _ = scores(datamodule.val_dataloader())
            write_json(folder / f"val-{t + 1:06d}.json", {"iteration": t + 1, "episodes": accuracies})
            keep_top_checkpoints(run / "checkpoints", t + 1, _mean(accuracies), driver.state(), driver.keep)
            save_atomic({**driver.state(), "iteration": t + 1}, latest)
            loss = float(torch.as_tensor(loss).detach())
            print(f"iteration {t + 1}: loss {loss:.4f}, val acc {_mean(accuracies):.4f}", file=sys.stderr, flush=True)
    if walls:
        write_json(folder / f"timing-{start:06d}.json", timing_summary(walls, cpus))

    # The final test: the best checkpoint alone, and the reference's ensemble where it has one.
    ranked = ranked_checkpoints(run / "checkpoints")
    if not ranked:
        return
    test_batches = list(datamodule.test_dataloader())
    per_model = []
    for path, _ in ranked:
        driver.load(torch.load(path, map_location="cpu"))
        per_model.append(scores(test_batches))
    best_accuracies = per_model[0][0]
    from metaplus.evaluation import mean_ci95

    acc, ci = mean_ci95(torch.tensor(best_accuracies))
    ensemble = {"ensemble_acc": None, "ensemble_ci95": None, "ensemble_rule": None}
    if driver.keep > 1:
        targets = [y.reshape(-1) for b in test_batches for y in driver.layout(b)[3]]
        votes = [float((sum(m[1][e] for m in per_model).argmax(1) == targets[e]).mean()) for e in range(len(targets))]
        ens, ens_ci = mean_ci95(torch.tensor(votes))
        ensemble = {"ensemble_acc": ens, "ensemble_ci95": ens_ci, "ensemble_rule": driver.ensemble_rule}
    write_json(
        folder / "test.json",
        {
            "iteration": spec["iterations"],
            "acc": acc,
            "ci95": ci,
            "episodes": best_accuracies,
            **ensemble,
            "ensemble_checkpoints": [[p.name, s] for p, s in ranked],
        },
    )


def training_batch(datamodule, iteration: int):
    """Training meta-batch number ``iteration`` exactly as metaplus's loader yields it: batch i of epoch e
    of the datamodule's own train loader (episodes seeded by (seed, "train", e, index))."""
    from types import SimpleNamespace

    epoch, i = divmod(iteration, datamodule.batches_per_epoch)
    # not a running trainer (state.status): the loader yields model inputs, normalised, as the reference wants
    datamodule.trainer = SimpleNamespace(current_epoch=epoch, world_size=1, state=SimpleNamespace(status=None))
    loader = datamodule.train_dataloader()
    size = datamodule.meta_batch_size
    # (epoch, index) pairs, as the loader's EpochSampler hands them out
    return loader.collate_fn([loader.dataset[(epoch, j)] for j in range(i * size, (i + 1) * size)])


def save_atomic(obj: Any, path: Path) -> None:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def ranked_checkpoints(folder: Path) -> list[tuple[Path, float]]:
    """Kept checkpoints ``iter<k>-acc<score>.pt``, best validation score first (earlier on ties)."""
    found = []
    for path in folder.glob("iter*-acc*.pt"):
        iteration, score = path.stem.removeprefix("iter").split("-acc")
        found.append((path, float(score), int(iteration)))
    return [(p, s) for p, s, _ in sorted(found, key=lambda f: (-f[1], f[2]))]


def keep_top_checkpoints(folder: Path, iteration: int, score: float, state: dict, keep: int) -> None:
    """Save this evaluation's checkpoint when it is among the ``keep`` best, and drop the ones that fall out."""
    ranked = ranked_checkpoints(folder)
    if len(ranked) >= keep and score <= ranked[keep - 1][1]:
        return
    save_atomic(state, folder / f"iter{iteration:06d}-acc{score:.6f}.pt")
    for path, _ in ranked_checkpoints(folder)[keep:]:
        path.unlink()


def timing_summary(walls: list[float], cpus: list[float]) -> dict[str, Any]:
    timed, cpu = walls[1:] or walls, cpus[1:] or cpus
    return {
        "s_per_iteration": _mean(timed),
        "cpu_s_per_iteration": _mean(cpu),
        "iteration_times": walls,
        "cpu_iteration_times": cpus,
    }


# -- one step from the same weights ------------------------------------------------------------------------
def reference_parameter(name: str) -> tuple[str, int | None]:
    """The reference's name of a metaplus MAML++ parameter (Conv-4 + LSLR), and for a learned-rate vector
    how many of its entries metaplus has (the reference keeps one more, never used)."""
    import re

    backbone = {
        r"blocks\.(\d+)\.conv\.(weight|bias)": r"layer_dict.conv\1.conv.\2",
        r"blocks\.(\d+)\.norm\.(weight|bias)": r"layer_dict.conv\1.norm_layer.\2",
        r"head\.weight": "layer_dict.linear.weights",
        r"head\.bias": "layer_dict.linear.bias",
    }

    def of_backbone(inner: str) -> str:
        for pattern, replacement in backbone.items():
            if re.fullmatch(pattern, inner):
                return re.sub(pattern, replacement, inner)
        raise KeyError(f"no reference parameter for metaplus's {name}")

    if name.startswith("backbone."):
        return "classifier." + of_backbone(name.removeprefix("backbone.")), None
    if name.startswith("inner_lrs."):
        inner = of_backbone(name.removeprefix("inner_lrs.").replace("-", "."))
        return "inner_loop_optimizer.names_learning_rates_dict." + inner.replace(".", "-"), -1
    raise KeyError(f"no reference parameter for metaplus's {name}")


def metaplus_meta_gradient(learner, cfg, batch, metrics: bool = False) -> list:
    """metaplus's meta-gradient of one meta-batch left in ``.grad`` (per-task accumulation, as in
    training), outside fit: an idle Trainer at epoch 0 (MSL reads its weights from the epoch) and plain
    backward. Returns the tasks' losses (with ``metrics``: their (loss, metric) pairs)."""
    import lightning as L

    learner.trainer = L.Trainer(
        max_epochs=cfg.trainer.max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    learner.manual_backward = lambda loss: loss.backward()
    learner.train()
    learner.zero_grad()
    results = [learner.accumulate_task(batch[b], 1.0 / len(batch)) for b in range(len(batch))]
    return results if metrics else [loss for loss, _ in results]


def compare_gradients(pairs) -> dict[str, dict[str, Any]]:
    """``[(name, metaplus's gradient, the reference's)]`` -> per parameter the largest differences, each
    relative to that gradient's size, except where both codes give rounding noise around an exact zero
    (a conv bias before batch norm with batch statistics has no effect on the output, so no gradient,
    and neither has its learned rate): those are compared against the largest gradient of all."""
    gradients = {
        name: {
            "max_abs_difference": float((ours - theirs).abs().max()),
            "max_abs_reference": float(theirs.abs().max()),
            "max_abs_metaplus": float(ours.abs().max()),
        }
        for name, ours, theirs in pairs
    }
    largest = max(g["max_abs_reference"] for g in gradients.values())
    for g in gradients.values():
        g["zero_by_construction"] = max(g["max_abs_reference"], g["max_abs_metaplus"]) < 1e-4 * largest
        g["relative_difference"] = g["max_abs_difference"] / (
            largest if g["zero_by_construction"] else g["max_abs_reference"]
        )
    return gradients


def step_check(comparison: Comparison, code: Path, overrides: list[str], threads: int) -> dict[str, Any]:
    """Both codes from the SAME weights (metaplus's initialisation copied into the reference) on the same
    first training meta-batch and first validation episodes: the meta-loss, every meta-gradient (the
    reference's forward as run_train_iter calls it, before its optimizer step; metaplus's per-task
    accumulation) and the adapted query logits of evaluation. Differences beyond float rounding are
    differences of the algorithms' arithmetic."""
    from metaplus.benchmarking import reference_mamlpp as ref

    load_reference_code(comparison, code, threads)
    import torch

    from metaplus.compose import compose_config as compose
    from metaplus.config import instantiate_group
    from metaplus.nn.init_from import build_backbone

    cfg = compose([o for o in overrides if not o.startswith(("hydra.", "+callbacks.parity"))])
    datamodule = instantiate_group(cfg.data, "data")
    if comparison.driver in ("l2l", "dragen"):
        module = import_module(f"metaplus.benchmarking.reference_{comparison.driver}")
        return module.same_weights_step(code, cfg, datamodule)
    torch.manual_seed(0)
    learner = instantiate_group(cfg.algo, "algo", backbone=build_backbone(cfg.model), task_type=datamodule.task)
    model = ref.build_model(ref.released_args(code, comparison.reference_config))
    theirs = dict(model.named_parameters())
    pairs = []
    with torch.no_grad():
        for name, param in learner.named_parameters():
            target_name, _ = reference_parameter(name)
            target = theirs[target_name]
            target[: param.shape[0]].copy_(param) if target.shape != param.shape else target.copy_(param)
            pairs.append((name, param, target))
    ways = cfg.data.ways

    def tensors(batch):
        xs, xq, ys, yq = ref.reference_layout(batch.support_x, batch.support_y, batch.query_x, batch.query_y, ways)
        return (torch.tensor(xs), torch.tensor(xq), torch.tensor(ys).long(), torch.tensor(yq).long())

    batch = training_batch(datamodule, 0)
    model.train()
    model.zero_grad()
    with contextlib.redirect_stdout(sys.stderr):
        their_losses, _ = model.train_forward_prop(data_batch=tensors(batch), epoch=0)
    their_losses["loss"].backward()
    our_losses = metaplus_meta_gradient(learner, cfg, batch)
    gradients = compare_gradients(
        [
            (name, param.grad, target.grad[: param.shape[0]] if target.shape != param.shape else target.grad)
            for name, param, target in pairs
        ]
    )
    val = next(iter(datamodule.val_dataloader()))
    their_logits = ref.episode_predictions(
        model, ref.reference_layout(val.support_x, val.support_y, val.query_x, val.query_y, ways)
    )
    logit_gaps = []
    learner.eval()
    for b in range(len(val)):
        order = torch.argsort(val.query_y[b], stable=True)  # the reference's rows: class 0 first, ...
        ours = learner.adapted_prediction(val[b], learner.test_inner_steps)[order]
        logit_gaps.append(float((ours - torch.tensor(their_logits[b])).abs().max()))
    worst = max(gradients, key=lambda n: gradients[n]["relative_difference"])
    return {
        "meta_loss": {"metaplus": float(torch.stack(our_losses).mean()), "reference": float(their_losses["loss"])},
        "max_relative_gradient_difference": gradients[worst]["relative_difference"],
        "worst_parameter": worst,
        "zero_by_construction": sorted(n for n, g in gradients.items() if g["zero_by_construction"]),
        "gradients": gradients,
        "max_abs_logit_difference_evaluation": max(logit_gaps),
        "episodes": {"train": len(batch), "val": len(val)},
    }


# -- gathering and reporting ---------------------------------------------------------------------------------
def load_run(run: Path) -> dict[str, Any]:
    folder = run / "parity"
    curve = {}
    for path in sorted(folder.glob("val-*.json")):
        record = json.loads(path.read_text())
        curve[record["iteration"]] = record["episodes"]
    timings = [json.loads(p.read_text()) for p in sorted(folder.glob("timing-*.json"))]
    counts = [max(len(t.get("iteration_times", [])) - 1, 1) for t in timings]

    def weighted(key):
        values = [(t[key], n) for t, n in zip(timings, counts) if t.get(key) is not None]
        return sum(v * n for v, n in values) / sum(n for _, n in values) if values else None

    invocations = (
        json.loads((folder / "invocations.json").read_text()) if (folder / "invocations.json").is_file() else []
    )
    test = json.loads((folder / "test.json").read_text()) if (folder / "test.json").is_file() else None
    return {
        "curve": curve,
        "s_per_iteration": weighted("s_per_iteration"),
        "cpu_s_per_iteration": weighted("cpu_s_per_iteration"),
        "peak_rss_gb": max((i["peak_rss_gb"] for i in invocations), default=None),
        "test": test,
    }


def settings_table(comparison: Comparison, cfg, code: Path, meta_batch: int | None = None) -> list[dict[str, Any]]:
    """Every setting both codes have: (name, reference key = value, metaplus key = value, same)."""
    if comparison.driver == "l2l":
        from metaplus.benchmarking import reference_l2l

        rows = reference_l2l.settings_rows(cfg, reference_l2l.example_defaults(code), meta_batch)
    elif comparison.driver == "dragen":
        from metaplus.benchmarking import reference_dragen

        args = reference_dragen.reference_args(code)
        if meta_batch:
            args.task_num = meta_batch
        rows = reference_dragen.settings_rows(cfg, args, reference_dragen.network_config(code, args))
    else:
        from metaplus.benchmarking.reference_mamlpp import released_args

        rows = mamlpp_settings_rows(cfg, released_args(code, comparison.reference_config))
    return [
        {"setting": name, "reference": f"{rk} = {rv}", "metaplus": f"{mk} = {mv}", "same": rv == mv}
        for name, rk, rv, mk, mv in rows
    ]


def mamlpp_settings_rows(cfg, args) -> list[tuple]:
    """(setting, reference key, its value, metaplus key, its value): MAML++'s released config and metaplus's."""
    rows = [
        ("ways", "num_classes_per_set", args.num_classes_per_set, "data.ways", cfg.data.ways),
        ("shots", "num_samples_per_class", args.num_samples_per_class, "data.shots", cfg.data.shots),
        ("queries per class", "num_target_samples", args.num_target_samples, "data.queries", cfg.data.queries),
        ("meta-batch", "batch_size", args.batch_size, "data.meta_batch_size", cfg.data.meta_batch_size),
        (
            "inner steps (training)",
            "number_of_training_steps_per_iter",
            args.number_of_training_steps_per_iter,
            "algo.inner_steps",
            cfg.algo.inner_steps,
        ),
        (
            "inner steps (evaluation)",
            "number_of_evaluation_steps_per_iter",
            args.number_of_evaluation_steps_per_iter,
            "algo.test_inner_steps",
            cfg.algo.test_inner_steps,
        ),
        ("inner lr (LSLR start)", "task_learning_rate", args.task_learning_rate, "algo.inner_lr", cfg.algo.inner_lr),
        ("meta lr", "meta_learning_rate", args.meta_learning_rate, "algo.meta_lr", cfg.algo.meta_lr),
        (
            "min meta lr (cosine floor)",
            "min_learning_rate",
            args.min_learning_rate,
            "algo.min_meta_lr",
            cfg.algo.min_meta_lr,
        ),
        ("epochs", "total_epochs", args.total_epochs, "trainer.max_epochs", cfg.trainer.max_epochs),
        (
            "iterations per epoch",
            "total_iter_per_epoch",
            args.total_iter_per_epoch,
            "data.batches_per_epoch",
            cfg.data.batches_per_epoch,
        ),
        (
            "multi-step loss",
            "use_multi_step_loss_optimization",
            args.use_multi_step_loss_optimization,
            "algo.msl",
            cfg.algo.msl,
        ),
        (
            "MSL epochs",
            "multi_step_loss_num_epochs",
            args.multi_step_loss_num_epochs,
            "algo.msl_epochs",
            cfg.algo.msl_epochs,
        ),
        (
            "second order from iteration 0",
            "second_order and first_order_to_second_order_epoch < 0",
            bool(args.second_order and args.first_order_to_second_order_epoch < 0),
            "not algo.first_order and (not algo.da or algo.da_epochs == 0)",
            bool(not cfg.algo.first_order and (not cfg.algo.da or cfg.algo.da_epochs == 0)),
        ),
        ("per-step BN statistics", "per_step_bn_statistics", args.per_step_bn_statistics, "algo.bnrs", cfg.algo.bnrs),
        (
            "per-step BN weights and biases",
            "per_step_bn_statistics and learnable_bn_gamma/beta",
            bool(args.per_step_bn_statistics and args.learnable_bn_gamma and args.learnable_bn_beta),
            "algo.bnwb",
            cfg.algo.bnwb,
        ),
        ("BN normalises with", "F.batch_norm(training=True)", "batch", "algo.bn_stats", cfg.algo.bn_stats),
        (
            "BN affine adapted in the inner loop",
            "enable_inner_loop_optimizable_bn_params",
            args.enable_inner_loop_optimizable_bn_params,
            "algo.adapt_bn_affine",
            cfg.algo.adapt_bn_affine,
        ),
        (
            "learned per-layer per-step inner lr",
            "learnable_per_layer_per_step_inner_loop_learning_rate",
            args.learnable_per_layer_per_step_inner_loop_learning_rate,
            "algo.lslr",
            cfg.algo.lslr,
        ),
        ("cosine-annealed meta lr", "CosineAnnealingLR (always)", True, "algo.ca", cfg.algo.ca),
        ("filters", "cnn_num_filters", args.cnn_num_filters, "model.filters", cfg.model.filters),
        ("conv blocks", "num_stages", args.num_stages, "model.blocks", cfg.model.blocks),
        ("activation", "F.leaky_relu (always)", "leaky_relu", "model.activation", cfg.model.activation),
        ("init", "xavier_uniform_ weights, zero biases (always)", "xavier", "model.init", cfg.model.init),
        (
            "meta-gradient clamp",
            "'imagenet' in dataset_name -> 10",
            10.0 if "imagenet" in args.dataset_name else None,
            "algo.grad_clip_value",
            cfg.algo.grad_clip_value,
        ),
        (
            "Omniglot rotation augmentation (training)",
            "'omniglot' in dataset_name",
            "omniglot" in args.dataset_name,
            "data.source.augment_rotations",
            bool(cfg.data.source.get("augment_rotations", False)),
        ),
        ("ensemble size", "max_models_to_save", args.max_models_to_save, "ensemble_top_k", cfg.ensemble_top_k),
        (
            "image size",
            "image_height x image_width",
            f"{args.image_height}x{args.image_width}",
            "data.image_size",
            f"{cfg.data.image_size}x{cfg.data.image_size}",
        ),
    ]
    return rows


def check_settings(table: list[dict[str, Any]], comparison: Comparison) -> None:
    different = [row for row in table if not row["same"]]
    if different:
        sys.exit(
            f"parity {comparison.name}: the two codes would run with different settings:\n"
            + "\n".join(f"  {r['setting']}: reference {r['reference']}, metaplus {r['metaplus']}" for r in different)
        )


def comparison_record(
    comparison: Comparison,
    out: Path,
    code: Path | None,
    settings: list | None,
    overrides: list[str] | None,
    a: argparse.Namespace,
) -> dict[str, Any]:
    runs = {name: {} for name in CODES}
    for name in CODES:
        for run in sorted((out / comparison.name / name).glob("seed*")):
            runs[name][int(run.name.removeprefix("seed"))] = load_run(run)
    curves = {name: {seed: r["curve"] for seed, r in runs[name].items() if r["curve"]} for name in CODES}
    points = compare_curves(curves) if all(curves.values()) else []
    final = {}
    for name in CODES:
        tests = {seed: r["test"] for seed, r in runs[name].items() if r["test"]}
        final[name] = {
            str(seed): {
                k: t.get(k) for k in ("iteration", "acc", "ci95", "ensemble_acc", "ensemble_ci95", "ensemble_rule")
            }
            for seed, t in tests.items()
        }
    best = {
        name: [t["episodes"] for r in runs[name].values() if (t := r["test"]) and t.get("episodes")] for name in CODES
    }
    final["difference_best_checkpoint"] = (
        difference_ci(best["metaplus"], best["reference"]) if all(best.values()) else None
    )
    return {
        "name": comparison.name,
        "title": comparison.title,
        "reference": {
            "name": comparison.reference,
            "url": comparison.url,
            "commit": reference_commit(code) if code else None,
            "config": comparison.reference_config,
        },
        "target": comparison.target,
        "notes": list(comparison.notes),
        "settings": settings,
        "metaplus_overrides": overrides,
        "evaluation": {
            "eval_every": a.eval_every,
            "val_episodes": a.val_episodes,
            "test_episodes": a.test_episodes,
            "threads": a.threads,
            "meta_batch": getattr(a, "meta_batch", None),
        },
        "curves": {
            name: {str(seed): [[it, _mean(v)] for it, v in sorted(c.items())] for seed, c in curves[name].items()}
            for name in CODES
        },
        "difference": points,
        "final_test": final,
        "cost": {
            name: {
                str(seed): {k: r[k] for k in ("s_per_iteration", "cpu_s_per_iteration", "peak_rss_gb")}
                for seed, r in runs[name].items()
            }
            for name in CODES
        },
        "verdict": verdict(points),
        "same_weights_step": (
            json.loads((out / comparison.name / "step_check.json").read_text())
            if (out / comparison.name / "step_check.json").is_file()
            else None
        ),
        "known_differences": KNOWN_DIFFERENCES.get(comparison.driver or "", []),
        "regenerate": regenerate_command(comparison, a),
    }


def regenerate_command(comparison: Comparison, a: argparse.Namespace) -> str:
    return (
        f"{comparison.env}=<reference dir> python bench/parity.py --comparison {comparison.name} "
        f"--iterations {a.iterations} --eval-every {a.eval_every} --seeds {seeds_argument(a.seed_list)} "
        + (f"--meta-batch {a.meta_batch} " if getattr(a, "meta_batch", None) else "")
        + f"--val-episodes {a.val_episodes} --test-episodes {a.test_episodes} --threads {a.threads} "
        f"--out <runs dir> --publish" + (" --smoke" if a.smoke else "")
    )


def seeds_argument(seeds: Sequence[int]) -> str:
    """What --seeds reads back as ``seeds``: a count for 0..n-1, else a list (a lone seed with a comma)."""
    if list(seeds) == list(range(len(seeds))):
        return str(len(seeds))
    return ",".join(map(str, seeds)) + ("," if len(seeds) == 1 else "")


def full_command(comparison: Comparison) -> str:
    """The command of the comparison at the issue's size (600 validation and test episodes, 1 thread)."""
    iterations, every, seeds = comparison.full
    return (
        f"{comparison.env}=<reference dir> python bench/parity.py --comparison {comparison.name} "
        f"--iterations {iterations} --eval-every {every} --seeds {seeds} --out outputs/parity --publish"
    )


def pending_record(comparison: Comparison) -> dict[str, Any]:
    """A comparison not run yet: listed with what it needs."""
    return {
        "name": comparison.name,
        "title": comparison.title,
        "target": comparison.target,
        "notes": list(comparison.notes),
        "reference": {
            "name": comparison.reference,
            "url": comparison.url,
            "commit": None,
            "driver_commit": comparison.driver_commit,
            "config": comparison.reference_config,
        },
        "settings": None,
        "metaplus_overrides": None,
        "evaluation": {},
        "curves": {},
        "difference": [],
        "final_test": {name: {} for name in CODES},
        "cost": {name: {} for name in CODES},
        "verdict": {"parity": None, "text": "not run yet"},
        "same_weights_step": None,
        "known_differences": KNOWN_DIFFERENCES.get(comparison.driver or "", []),
        "regenerate": None,
    }


def plot(record: dict[str, Any], path: Path, smoke: bool = False) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4))
    for name, colour in zip(CODES, ("tab:blue", "tab:orange")):
        points = [(p["iteration"], p[name]) for p in record["difference"]]
        if not points:
            continue
        x = [i for i, _ in points]
        mean = [s["mean"] * 100 for _, s in points]
        ci = [s["ci95"] * 100 for _, s in points]
        seeds = points[0][1]["seeds"]
        ax.plot(x, mean, marker="o", color=colour, label=f"{name} ({seeds} seed{'s' * (seeds > 1)})")
        ax.fill_between(
            x, [m - c for m, c in zip(mean, ci)], [m + c for m, c in zip(mean, ci)], color=colour, alpha=0.2
        )
    ax.set_xlabel("meta-iteration")
    ax.set_ylabel(f"validation accuracy, % ({record['evaluation']['val_episodes']} fixed episodes)")
    ax.set_title(("SMOKE RUN (plumbing only): " if smoke else "") + record["title"], fontsize=10 if smoke else None)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pct(value: float | None, ci: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value * 100:.2f}" + (f" ± {ci * 100:.2f}" if ci is not None else "")


def markdown(records: list[dict[str, Any]], plots: dict[str, str], smoke: bool) -> str:
    lines = ["# Parity with the reference implementations", ""]
    if smoke:
        lines += [
            "**SMOKE RUN**: a few iterations to prove the harness's plumbing; the figures say nothing about parity.",
            "",
        ]
    lines += [
        "metaplus and each reference trained side by side at equal meta-iterations, on the same episodes "
        "and settings (bench/parity.py, issue 25). Difference = metaplus - reference in validation "
        "accuracy on the same fixed episodes, with its 95 % interval over seeds and episodes; parity holds "
        "when every interval contains 0 or favours metaplus.",
        "",
    ]
    for r in records:
        ref = r["reference"]
        lines += [
            f"## {r['title']} (`{r['name']}`)",
            "",
            f"Reference: {ref['name']}, {ref['url']}"
            + (f" at commit {ref['commit']}" if ref["commit"] else "")
            + (
                f" (not run yet; the driver was built against commit {ref['driver_commit']})"
                if not ref["commit"] and ref.get("driver_commit")
                else ""
            )
            + (f", released config `{ref['config']}`" if ref["config"] else "")
            + ".",
            "",
            f"Target size: {r['target']}.",
            "",
        ]
        lines += [f"- {note}" for note in r["notes"]]
        if r["notes"]:
            lines.append("")
        smoke_run = smoke and r["regenerate"] is not None
        lines += [
            f"**Verdict{' of the smoke run (not evidence either way)' if smoke_run else ''}: {r['verdict']['text']}.**",
            "",
        ]
        check = r.get("same_weights_step")
        if check and "max_abs_loss_difference_evaluation" in check:
            loss = check["meta_loss"]
            lines += [
                f"Same weights, one step (metaplus's initialisation copied into the reference, first training "
                f"meta-batch of {check['episodes']['train']} tasks): meta-loss {loss['metaplus']:.7f} (metaplus) vs "
                f"{loss['reference']:.7f} (reference); largest meta-gradient difference "
                f"{check['max_relative_gradient_difference']:.1e} of the gradient's size "
                f"(`{check['worst_parameter']}`; gradients zero by construction, conv biases before batch norm, "
                f"compared with the largest gradient); adapted query losses on {check['episodes']['val']} "
                f"validation episodes differ by at most {check['max_abs_loss_difference_evaluation']:.1e}.",
                "",
            ]
        elif check and "max_abs_accuracy_difference_evaluation" in check:
            acc = check["train_query_accuracy_last_step"]
            lines += [
                f"Same weights, one step (metaplus's initialisation copied into the reference, first training "
                f"meta-batch of {check['episodes']['train']} tasks): last-step query accuracy "
                f"{acc['metaplus'] * 100:.2f} % (metaplus) vs {acc['reference'] * 100:.2f} % (reference); largest "
                f"meta-gradient difference {check['max_relative_gradient_difference']:.1e} of the gradient's size "
                f"(`{check['worst_parameter']}`); accuracies after the evaluation's inner steps on "
                f"{check['episodes']['val']} validation episodes differ by at most "
                f"{check['max_abs_accuracy_difference_evaluation'] * 100:.2f} points.",
                "",
            ]
        elif check:
            loss = check["meta_loss"]
            lines += [
                f"Same weights, one step (metaplus's initialisation copied into the reference, first training "
                f"meta-batch of {check['episodes']['train']} tasks): meta-loss {loss['metaplus']:.7f} (metaplus) vs "
                f"{loss['reference']:.7f} (reference); largest meta-gradient difference "
                f"{check['max_relative_gradient_difference']:.1e} of the gradient's size "
                f"(`{check['worst_parameter']}`; gradients that are zero by construction, conv biases before "
                f"batch norm and their learned rates, compared with the largest gradient); adapted query logits "
                f"on {check['episodes']['val']} validation episodes differ by at most "
                f"{check['max_abs_logit_difference_evaluation']:.1e}.",
                "",
            ]
        if r["name"] in plots:
            lines += [f"![{r['title']}]({plots[r['name']]})", ""]
        if r["difference"]:
            lines += [
                "| iteration | metaplus, % | reference, % | difference, points (95 % CI) | holds |",
                "|---:|---:|---:|---|:---:|",
            ]
            for p in r["difference"]:
                lines.append(
                    f"| {p['iteration']} | {pct(p['metaplus']['mean'], p['metaplus']['ci95'])} | "
                    f"{pct(p['reference']['mean'], p['reference']['ci95'])} | {p['difference'] * 100:+.2f} "
                    f"[{p['ci_low'] * 100:+.2f}, {p['ci_high'] * 100:+.2f}] | {'yes' if p['holds'] else 'no'} |"
                )
            lines.append("")
        if any(r["cost"][name] for name in CODES):
            lines += [
                "| code | seed | test, best checkpoint, % | test, top-5 ensemble, % | s/iteration (wall / CPU) | peak RSS, GB |",
                "|---|---:|---:|---:|---:|---:|",
            ]
        for name in CODES:
            for seed, cost in r["cost"][name].items():
                t = r["final_test"][name].get(seed) or {}
                lines.append(
                    f"| {name} | {seed} | {pct(t.get('acc'), t.get('ci95'))} at {t.get('iteration', '–')} | "
                    f"{pct(t.get('ensemble_acc'), t.get('ensemble_ci95'))} | "
                    f"{fmt(cost['s_per_iteration'])} / {fmt(cost['cpu_s_per_iteration'])} | "
                    f"{fmt(cost['peak_rss_gb'])} |"
                )
        lines.append("")
        if r["settings"]:
            lines += [
                "<details><summary>Settings of both codes</summary>",
                "",
                "| setting | reference | metaplus | same |",
                "|---|---|---|:---:|",
            ]
            lines += [
                f"| {s['setting']} | `{s['reference']}` | `{s['metaplus']}` | {'yes' if s['same'] else 'NO'} |"
                for s in r["settings"]
            ]
            lines += [
                "",
                "metaplus's command: `python train.py " + " ".join(r["metaplus_overrides"] or []) + "`",
                "",
                "</details>",
                "",
            ]
        if r["known_differences"]:
            lines += ['Differences between the two codes ("harness:" ones are removed by the harness):', ""]
            lines += [f"- {d}" for d in r["known_differences"]]
            lines.append("")
        if r["regenerate"]:
            lines += ["Regenerate:", "", "```bash", r["regenerate"], "```", ""]
    lines += [
        "## Commands at the issue's sizes",
        "",
        "Each continues its runs when repeated with a larger `--iterations` (multiples of 500 continue "
        "exactly); runs of other seeds or codes can go to separate processes with `--seeds 1,2` / "
        "`--codes reference`, then `--report-only --publish` writes the report once they are done.",
        "",
        "```bash",
        *[full_command(c) for c in COMPARISONS.values()],
        "```",
        "",
    ]
    return "\n".join(lines)


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def public(text: str, out: Path) -> str:
    """No path of this machine in what is committed."""
    for path, name in ((out.resolve(), "<runs dir>"), (REPO, ".")):
        text = text.replace(str(path), name)
    for key in ("METAPLUS_DATA",):
        if os.environ.get(key):
            text = text.replace(str(Path(os.environ[key]).resolve()), f"${key}").replace(os.environ[key], f"${key}")
    return text


def write_report(records: list[dict[str, Any]], out: Path, publish: bool, smoke: bool) -> None:
    stored = out / "parity.json"
    kept = json.loads(stored.read_text())["comparisons"] if stored.is_file() else {}
    kept.update({r["name"]: r for r in records})
    ordered = [kept[name] if name in kept else pending_record(c) for name, c in COMPARISONS.items()]
    plotted = [r for r in ordered if r["difference"]]  # a comparison without curves yet has no plot
    for r in plotted:
        plot(r, out / f"parity_{r['name']}.png", smoke)
    payload = {"smoke": smoke, "comparisons": {r["name"]: r for r in ordered}}
    text = public(json.dumps(payload, indent=1), out) + "\n"
    stored.write_text(text)
    (out / "parity.md").write_text(
        public(markdown(ordered, {r["name"]: f"parity_{r['name']}.png" for r in plotted}, smoke), out)
    )
    if publish:
        (RESULTS / "parity.json").write_text(text)
        for r in plotted:
            shutil.copyfile(out / f"parity_{r['name']}.png", RESULTS / f"parity_{r['name']}.png")
        DOC.write_text(
            public(
                markdown(ordered, {r["name"]: f"../bench/results/parity_{r['name']}.png" for r in plotted}, smoke), out
            )
        )
    print(f"report: {stored}, {out / 'parity.md'}" + (f", {RESULTS / 'parity.json'}, {DOC}" if publish else ""))


# -- command line ------------------------------------------------------------------------------------------
def seed_list(text: str) -> list[int]:
    """``3`` -> seeds 0, 1, 2; ``0,4`` -> seeds 0 and 4."""
    values = [int(v) for v in text.split(",") if v.strip()]
    if len(values) == 1 and "," not in text:
        if values[0] < 1:
            raise argparse.ArgumentTypeError(f"--seeds {text}: a count >= 1 or a comma-separated list")
        return list(range(values[0]))
    if not values or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"--seeds {text}: a count >= 1 or a comma-separated list of seeds >= 0")
    return values


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--comparison", choices=sorted(COMPARISONS), help="which comparison (one row of COMPARISONS)")
    p.add_argument(
        "--reference",
        type=Path,
        help="the reference's directory (else the comparison's environment variable, e.g. METAPLUS_MAMLPP_REFERENCE)",
    )
    p.add_argument(
        "--iterations", type=int, default=2000, help="meta-iterations each run trains to (continues a shorter run)"
    )
    p.add_argument("--eval-every", type=int, default=250, help="validate both codes every N meta-iterations (<= 250)")
    p.add_argument(
        "--seeds",
        type=seed_list,
        default=[0, 1, 2],
        dest="seed_list",
        help="a count (3: seeds 0, 1, 2) or a list (0,4)",
    )
    p.add_argument(
        "--meta-batch",
        type=int,
        help="tasks per meta-iteration for both codes instead of the reference's (maml_* comparisons only; stated)",
    )
    p.add_argument("--val-episodes", type=int, default=600)
    p.add_argument("--test-episodes", type=int, default=600)
    p.add_argument("--threads", type=int, default=1, help="torch threads of each run (both codes alike)")
    p.add_argument("--codes", default="metaplus,reference", help="which codes to run now (both are reported)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="run directories and the report")
    p.add_argument("--report-only", action="store_true", help="re-render the report from the run directories")
    p.add_argument(
        "--publish",
        action="store_true",
        help="also write bench/results/parity.json, bench/results/parity_<comparison>.png and docs/parity.md",
    )
    p.add_argument("--smoke", action="store_true", help="label the report as a smoke run (plumbing only)")
    p.add_argument(
        "--step-check", action="store_true", help="redo the same-weights one-step check (done once per --out otherwise)"
    )
    p.add_argument("--child-reference", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-step-check", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child_reference is None and a.child_step_check is None:
        check_cli(p, a)
    return a


def check_cli(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.comparison is None:
        p.error("--comparison is required: " + ", ".join(sorted(COMPARISONS)))
    for key, value, low in (
        ("--iterations", a.iterations, 1),
        ("--eval-every", a.eval_every, 1),
        ("--val-episodes", a.val_episodes, 1),
        ("--test-episodes", a.test_episodes, 1),
        ("--threads", a.threads, 1),
        ("--meta-batch", 1 if a.meta_batch is None else a.meta_batch, 1),
    ):
        if value < low:
            p.error(f"{key} {value}: must be an integer >= {low}")
    if a.eval_every > 250:
        p.error(f"--eval-every {a.eval_every}: at most 250 (issue 25: validation every N <= 250 iterations)")
    if 500 % a.eval_every:
        p.error(
            f"--eval-every {a.eval_every}: must divide the 500 iterations of an epoch, so that both codes "
            "validate at the same iterations (metaplus counts val_check_interval within an epoch)"
        )
    if a.iterations % a.eval_every:
        p.error(
            f"--iterations {a.iterations}: must be a multiple of --eval-every {a.eval_every} (the last "
            "iteration is evaluated, and a longer rerun continues from it)"
        )
    codes = [c for c in a.codes.split(",") if c]
    if not codes or set(codes) - set(CODES):
        p.error(f"--codes {a.codes}: a comma-separated subset of {', '.join(CODES)}")
    a.codes = codes


def main(argv: Sequence[str] | None = None) -> None:
    a = parse_args(argv)
    if a.child_reference is not None:
        reference_child(a.child_reference)
        return
    if a.child_step_check is not None:
        spec = json.loads(a.child_step_check.read_text())
        result = step_check(
            COMPARISONS[spec["comparison"]], Path(spec["reference_dir"]), spec["metaplus_overrides"], spec["threads"]
        )
        write_json(a.child_step_check.with_name("step_check.json"), result)
        return
    comparison = COMPARISONS[a.comparison]
    out = a.out.resolve()
    code = reference_dir(comparison, a.reference)  # first: nothing starts without the reference
    if a.meta_batch is not None and comparison.driver not in META_BATCH_DRIVERS:
        sys.exit(
            f"parity {comparison.name}: --meta-batch changes only "
            f"{', '.join(c.name for c in COMPARISONS.values() if c.driver in META_BATCH_DRIVERS)} "
            "(a MAML++ comparison runs its released config's meta-batch)"
        )
    from metaplus.compose import compose_config as compose

    data_root = prepare_data(comparison, code, out)
    overrides = metaplus_overrides(comparison, 0, a, out / comparison.name / "metaplus" / "seed0", data_root)
    cfg = compose([o for o in overrides if not o.startswith(("hydra.", "+callbacks.parity"))])
    settings = settings_table(comparison, cfg, code, a.meta_batch)
    check_settings(settings, comparison)
    check_file = out / comparison.name / "step_check.json"
    if not a.report_only and comparison.driver in STEP_CHECK_DRIVERS and (a.step_check or not check_file.is_file()):
        from metaplus.reproduce.runner import run_env

        spec = check_file.with_name("step_check_spec.json")
        write_json(
            spec,
            {
                "comparison": comparison.name,
                "reference_dir": str(code),
                "metaplus_overrides": overrides,
                "threads": a.threads,
            },
        )
        print("  same-weights one-step check of both codes", flush=True)
        run_logged(
            [sys.executable, "-m", MODULE, "--child-step-check", str(spec)],
            check_file.with_name("step_check.log"),
            run_env(a.threads),
        )
    if not a.report_only:
        for seed in a.seed_list:
            for name in a.codes:
                run_one(name, comparison, seed, a, code, data_root, out)
    shown = [o.replace("seed=0", "seed=<k>").replace(str(out), "<runs dir>") for o in overrides]
    write_report([comparison_record(comparison, out, code, settings, shown, a)], out, a.publish, a.smoke)


if __name__ == "__main__":
    main()
