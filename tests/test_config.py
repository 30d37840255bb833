"""Every config option composes and instantiates; bad values fail early, naming the key."""

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from metaplus.compose import CONFIG_DIR as CONF
from metaplus.config import ConfigError, instantiate_group
from metaplus.data.errors import DatasetNotFoundError
from metaplus.run import build, run
from metaplus.testing import QUICK, shared_data_dir

# Options that need a particular companion to make sense (an image backbone needs image data).
COMPANIONS = {
    ("model", "conv4"): ["data=omniglot"],
    ("model", "resnet12"): ["data=omniglot"],
    ("model", "strided_conv4"): ["data=omniglot"],
    ("trainer", "ddp"): ["data.meta_batch_size=24"],
}
NEEDS_SHARED_DATA = {"omniglot", "miniimagenet"}
NOT_SHIPPED = {"cifarfs", "fc100", "tieredimagenet", "cub"}


def tiny_image_folder(root: Path, classes: int = 40, images: int = 17) -> Path:
    from PIL import Image

    for c in range(classes):
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(images):
            Image.new("RGB", (10, 10), (20 * c, 10 * i, 99)).save(root / f"class{c:02d}" / f"{i}.png")
    return root


GROUPS = ["algo", "data", "model", "trainer", "logger", "callbacks", "experiment"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def all_options():
    return [(g, o) for g in GROUPS for o in options(g)]


@pytest.mark.parametrize("group,option", all_options())
def test_every_group_option_composes_and_instantiates(make_config, tmp_path, group, option):
    key = f"{group}={option}"
    overrides = [key, *COMPANIONS.get((group, option), [])]
    if (group, option) == ("data", "imagefolder"):
        overrides += [f"data.root={tiny_image_folder(tmp_path / 'images')}", "data.image_size=16"]
    if (group, option) == ("data", "miniimagenet") or "miniimagenet" in option:
        overrides += ["data.source.max_images_per_class=20"]  # decoding all 21,600 JPEGs is for benchmarks
    cfg = make_config(overrides)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if cfg.data.name in NOT_SHIPPED:
        # Not distributable here: composing works and building fails early, naming where it looked
        # (tests/test_zoo_data.py trains on release-format fixtures).
        with pytest.raises(DatasetNotFoundError, match="not found"):
            build(cfg)
        return
    if cfg.data.name in NEEDS_SHARED_DATA and shared_data_dir() is None:
        pytest.skip(f"{key} composes; building it needs the shared {cfg.data.name} data (METAPLUS_DATA)")
    if cfg.data.name == "miniimagenet" and not (Path(cfg.data.root) / "train").is_dir():
        # the shared copy has val/test only so far: training must fail clearly, testing must work
        with pytest.raises(FileNotFoundError, match="split 'train' not found"):
            build(cfg)
        datamodule = instantiate_group(cfg.data, "data")
        datamodule.setup("test")
        assert datamodule.source("test").num_classes == 20
        return
    if group == "trainer" and option in ("gpu", "ddp") and not torch.cuda.is_available():
        pytest.skip(
            f"trainer={option} composes; instantiating it needs a GPU (tests/test_devices.py: its error without one)"
        )
    parts = build(cfg)
    assert parts["learner"].backbone is not None
    assert parts["trainer"].max_epochs == cfg.trainer.max_epochs


def test_defaults_are_maml_on_sinusoid_with_csv(make_config):
    cfg = make_config([])
    assert (cfg.algo.name, cfg.data.name, list(cfg.logger)) == ("maml", "sinusoid", ["csv"])
    assert cfg.monitor == "val/mse" and cfg.monitor_mode == "min"


def test_fomaml_is_maml_with_first_order(make_config):
    maml, fomaml = make_config(["algo=maml"]).algo, make_config(["algo=fomaml"]).algo
    assert fomaml.first_order is True and maml.first_order is False
    assert {k: v for k, v in fomaml.items() if k not in ("name", "first_order")} == {
        k: v for k, v in maml.items() if k not in ("name", "first_order")
    }


@pytest.mark.parametrize(
    "override,key,allowed",
    [
        ("data.shots=0", "data.shots", "an integer >= 1"),
        ("data.queries=-2", "data.queries", "an integer >= 1"),
        ("data.meta_batch_size=0", "data.meta_batch_size", "an integer >= 1"),
        ("algo.inner_steps=-1", "algo.inner_steps", "an integer >= 0"),
        ("algo.inner_steps=abc", "algo.inner_steps", "an integer >= 0"),
        ("algo.inner_lr=0", "algo.inner_lr", "a number > 0"),
        ("algo.meta_lr=-0.1", "algo.meta_lr", "a number > 0"),
        ("algo.first_order=maybe", "algo.first_order", "true or false"),
        ("data.task=ranking", "data.task", "one of ['classification', 'regression']"),
        ("model.hidden=[40,0]", "model.hidden", "a list of positive integers"),
        ("data.source.amplitude=[5,1]", "data.source.amplitude", "a [low, high] pair with low <= high"),
        ("seed=-3", "seed", "an integer >= 0"),
    ],
)
def test_bad_values_fail_before_training_naming_key_and_allowed(make_config, tmp_path, override, key, allowed):
    out = tmp_path / "bad_run"
    cfg = make_config([*QUICK, override], output_dir=out)
    with pytest.raises(ConfigError) as err:
        if key == "data.task":
            instantiate_group(cfg.data, "data")
        else:
            run(cfg)
    assert err.value.key == key
    assert allowed in str(err.value)
    assert not out.exists(), "a run that failed on its config must leave nothing behind"


def test_misspelt_key_names_it_suggests_and_lists_allowed(make_config):
    cfg = make_config(["+algo.inner_stpes=5"])
    with pytest.raises(ConfigError) as err:
        build(cfg)
    message = str(err.value)
    assert err.value.key == "algo.inner_stpes"
    assert "did you mean 'inner_steps'" in message
    for allowed in ("inner_lr", "meta_lr", "test_inner_steps", "first_order"):
        assert allowed in message


def test_missing_checkpoint_is_rejected(make_config, tmp_path):
    cfg = make_config([*QUICK, f"ckpt_path={tmp_path / 'nope.ckpt'}"])
    with pytest.raises(ConfigError, match="ckpt_path"):
        build(cfg)
