"""The public API (issue 16): ``metaplus.load`` -> ``learner.preprocess`` / ``adapt_to`` / ``predict``.

A tiny run is trained, then only the public API (``metaplus.load``, ``metaplus.api.fixed_episodes``,
``adapt_to``, ``predict``/``score``) reproduces the test numbers its results.json holds, which the
trainer computed with ``evaluate_task``.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image

import metaplus
from metaplus.algorithms import MAML
from metaplus.api import RunNotFoundError, fixed_episodes
from metaplus.compose import compose_config
from metaplus.run import run
from metaplus.testing import OMNIGLOT, QUICK

# MAML++ with 2 inner steps: per-step BN weights (bnwb) make the step index matter, bnrs keeps
# per-step running statistics (for bn_stats="running").
OMNIGLOT_RUN = [
    *QUICK,
    "algo=mamlpp",
    "algo.inner_steps=2",
    "algo.test_inner_steps=2",
    "model=conv4",
    "model.filters=8",
    "data=omniglot",
    "data.meta_batch_size=2",
    "data.batches_per_epoch=4",
    "data.val_episodes=4",
    "data.test_episodes=6",
]
SINUSOID_RUN = [*QUICK, "algo.test_inner_steps=3", "data.test_episodes=10"]


def overrides_for(cfg_overrides: list[str], cache: Path) -> list[str]:
    return [*cfg_overrides, f"data.root={OMNIGLOT}", f"data.cache_dir={cache}"]


@pytest.fixture(scope="module")
def omniglot_run(tmp_path_factory, cache_dir) -> Path:  # noqa: F811
    if OMNIGLOT is None or not (OMNIGLOT / "images_background.zip").is_file():
        pytest.skip("shared Omniglot absent (set $METAPLUS_DATA)")
    out = tmp_path_factory.mktemp("api") / "omniglot"
    run(compose_config(overrides_for(OMNIGLOT_RUN, cache_dir), out))
    return out


@pytest.fixture(scope="module")
def sinusoid_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api") / "sinusoid"
    run(compose_config(SINUSOID_RUN, out))
    return out


def replay(learner, steps: int | None = None) -> tuple[float, float]:
    """Mean query loss and metric over the run's fixed test episodes, through the public API."""
    losses, metrics = [], []
    for task in fixed_episodes(learner.config, "test"):
        adapted = learner.adapt_to(task.support_x, task.support_y, steps=steps)
        loss, metric = adapted.score(task.query_x, task.query_y)
        losses.append(loss)
        metrics.append(metric)
    return float(np.mean(losses)), float(np.mean(metrics))


def test_omniglot_run_reproduces_evaluate_task_numbers(omniglot_run):
    results = json.loads((omniglot_run / "results.json").read_text())
    learner = metaplus.load(omniglot_run)
    assert learner.config.algo.name == "mamlpp" and learner.checkpoint_path.name.startswith("best-")
    loss, acc = replay(learner)  # steps=None: the run's test_inner_steps (2)
    assert acc == pytest.approx(results["test/acc"], abs=1e-6)
    assert loss == pytest.approx(results["test/loss"], rel=1e-5)
    _, acc0 = replay(learner, steps=0)
    assert acc0 == pytest.approx(results["test/acc_step0"], abs=1e-6)


def test_predict_and_predict_proba_agree_with_the_adapted_logits(omniglot_run):
    learner = metaplus.load(omniglot_run)
    task = next(fixed_episodes(learner.config, "test"))
    adapted = learner.adapt_to(task.support_x, task.support_y)
    logits = adapted(task.query_x)
    assert torch.equal(adapted.predict(task.query_x), logits.argmax(-1))
    assert torch.allclose(adapted.predict_proba(task.query_x), F.softmax(logits, -1))
    # Per-step BN weights: predictions after 2 steps use step 1's affine parameters, not step 0's.
    step0 = adapted.model(task.query_x, step=0)
    assert not torch.allclose(step0, logits), "the step index reaches the per-step layers"


def test_preprocess_is_the_training_preprocessing(omniglot_run):
    from io import BytesIO

    from metaplus.config import instantiate_group

    learner = metaplus.load(omniglot_run)
    source = instantiate_group(learner.config.data, "data").source("test")
    character = next(n for n in source.class_names if n.endswith("/rot000"))  # an unrotated test class
    raw = None
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(OMNIGLOT / f"{part}.zip") as zf:
            names = sorted(n for n in zf.namelist() if n.startswith(f"{part}/{character[:-7]}/") and n.endswith(".png"))
            if names:
                raw = zf.read(names[0])  # the class's first image (sorted by file name, as the source)
    # By hand: grey, Lanczos to 28x28, inverted (strokes 1, paper 0), / 255.
    image = Image.open(BytesIO(raw)).convert("L").resize((28, 28), Image.LANCZOS)
    expected = (255 - torch.tensor(np.asarray(image), dtype=torch.float32)) / 255
    got = learner.preprocess(raw)
    assert got.shape == (1, 1, 28, 28) and torch.allclose(got[0, 0], expected, atol=1e-6)
    assert torch.equal(learner.preprocess([Image.open(BytesIO(raw))]), got), "PIL images as files"
    # ... and the data source's own decoded copy of that image is the same tensor.
    row = int(source.data.offsets[source.class_names.index(character)])
    assert torch.equal(source.images_at(torch.tensor([row]))[0], got[0])


def test_batch_norm_depends_on_the_batch_unless_running_statistics_are_used(omniglot_run):
    task = next(fixed_episodes(metaplus.load(omniglot_run).config, "test"))
    for bn_stats, batch_independent in (("batch", False), ("running", True)):
        learner = metaplus.load(omniglot_run, bn_stats=bn_stats)
        adapted = learner.adapt_to(task.support_x, task.support_y)
        together = adapted(task.query_x)
        one_by_one = torch.cat([adapted(task.query_x[i : i + 1]) for i in range(4)])
        assert torch.allclose(together[:4], one_by_one, atol=1e-5) == batch_independent, bn_stats


def test_a_checkpoint_path_and_a_run_without_results_json_load_too(omniglot_run, tmp_path):
    by_dir = metaplus.load(omniglot_run)
    by_ckpt = metaplus.load(by_dir.checkpoint_path)
    task = next(fixed_episodes(by_dir.config, "test"))
    expected = by_dir.adapt_to(task.support_x, task.support_y)(task.query_x)
    assert torch.equal(by_ckpt.adapt_to(task.support_x, task.support_y)(task.query_x), expected)
    # A run killed before results.json: Hydra's .hydra/config.yaml (unresolved) and last.ckpt.
    copy = tmp_path / "copied_run"
    shutil.copytree(omniglot_run, copy)
    (copy / "results.json").unlink()
    (copy / ".hydra").mkdir()
    cfg = compose_config(overrides_for(OMNIGLOT_RUN, Path(by_dir.config.data.cache_dir)), copy)
    OmegaConf.save(cfg, copy / ".hydra" / "config.yaml")  # interpolations left unresolved, as Hydra writes it
    from_hydra = metaplus.load(copy)
    assert from_hydra.checkpoint_path == copy / "checkpoints" / "last.ckpt"
    assert from_hydra.config.paths.output_dir == str(copy)
    last = metaplus.load(omniglot_run / "checkpoints" / "last.ckpt")
    assert torch.equal(
        from_hydra.adapt_to(task.support_x, task.support_y)(task.query_x),
        last.adapt_to(task.support_x, task.support_y)(task.query_x),
    )


def test_sinusoid_run_reproduces_its_test_mse(sinusoid_run):
    results = json.loads((sinusoid_run / "results.json").read_text())
    learner = metaplus.load(sinusoid_run)
    loss, mse = replay(learner)
    assert mse == pytest.approx(results["test/mse"], rel=1e-5) and loss == pytest.approx(results["test/loss"], rel=1e-5)
    x = torch.linspace(-5, 5, 7).unsqueeze(1)
    assert torch.equal(learner.preprocess(x.tolist()), x), "non-image data: a float tensor"
    task = next(fixed_episodes(learner.config, "test"))
    adapted = learner.adapt_to(task.support_x, task.support_y, steps=1)
    assert torch.equal(adapted.predict(x), adapted(x)), "regression predicts values"
    with pytest.raises(ValueError, match="bn_stats='running' needs running statistics"):
        metaplus.load(sinusoid_run, bn_stats="running")


def test_missing_runs_and_lightning_s_loader_fail_helpfully(sinusoid_run, tmp_path):
    with pytest.raises(RunNotFoundError, match="no checkpoint in run directory.*last.ckpt"):
        metaplus.load(tmp_path)
    with pytest.raises(RunNotFoundError, match="neither a run directory nor a checkpoint"):
        metaplus.load(tmp_path / "nothing")
    ckpt = sinusoid_run / "checkpoints" / "last.ckpt"
    with pytest.raises(TypeError, match=r"use metaplus.load\("):
        MAML.load_from_checkpoint(ckpt)
    lone = tmp_path / "lone.ckpt"
    shutil.copy(ckpt, lone)
    with pytest.raises(RunNotFoundError, match="no config for the run"):
        metaplus.load(lone)


@pytest.mark.parametrize("module", ["miniimagenet", "imagefolder"])
def test_each_image_source_prepares_its_data_with_its_preprocessing(tmp_path, module):
    """``<source>.preprocessing(...)`` on a file equals what the source trains on for that file."""
    import importlib

    from metaplus.testing.zoo import make_class_folders

    make_class_folders(tmp_path / "set" / "val", classes=2, per_class=2, mode="RGB")
    mean, std = [0.5, 0.25, 0.1], [0.2, 0.3, 0.4]
    if module == "miniimagenet":
        from metaplus.data.miniimagenet import MiniImageNetTasks

        source = MiniImageNetTasks(2, 1, 1, root=str(tmp_path / "set"), image_size=12, mean=mean, std=std, split="val")
    else:
        from metaplus.data.imagefolder import ImageFolderTasks

        (tmp_path / "set" / "train").mkdir()
        source = ImageFolderTasks(2, 1, 1, root=str(tmp_path / "set"), image_size=12, mean=mean, std=std, split="val")
    prep = importlib.import_module(f"metaplus.data.{module}").preprocessing(image_size=12, mean=mean, std=std)
    file = tmp_path / "set" / "val" / "class01" / "img00.png"
    row = int(source.data.offsets[source.class_names.index("class01")])
    assert torch.equal(prep(file)[0], source.images_at(torch.tensor([row]))[0])
    # By hand: (x / 255 - mean) / std per channel of the 12x12 Lanczos-resized RGB image.
    pixels = torch.tensor(
        np.asarray(Image.open(file).convert("RGB").resize((12, 12), Image.LANCZOS)), dtype=torch.float32
    )
    expected = (pixels.permute(2, 0, 1) / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(prep(str(file))[0], expected, atol=1e-5)
