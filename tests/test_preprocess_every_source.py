"""``metaplus.load(run).preprocess`` is the training pipeline, for EVERY ``data=`` option (issue 27).

For each option of ``conf/data/`` a tiny copy of the dataset in its release format is written, a run
directory is made from the composed config (results.json's ``config`` + an untrained checkpoint: the
weights play no part here), and the raw file of the split's first image, passed through
``metaplus.load(run).preprocess``, must equal the tensor the data source trains on for that image.
Images are random noise at a size other than ``data.image_size``, so resizing, channel order and
normalisation all show.
"""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import metaplus
from metaplus.compose import CONFIG_DIR as CONF
from metaplus.compose import compose_config
from metaplus.config import ConfigError, instantiate_group
from metaplus.nn.init_from import build_backbone
from metaplus.testing.zoo import make_cifar100, make_cub, make_tiered_folders, make_tiered_pickled

OPTIONS = sorted(p.stem for p in (CONF / "data").glob("*.yaml"))
SIZE = 16  # data.image_size of every image option: not the files' own size, so every source resizes


def noise(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    return rng.integers(0, 256, (height, width, channels) if channels > 1 else (height, width), dtype=np.uint8)


def noisy_folder_images(folder: Path, rng: np.random.Generator) -> None:
    """Overwrite every image under ``folder`` with noise of its own size (PNG keeps it exact)."""
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
            with Image.open(path) as image:
                width, height = image.size
            Image.fromarray(noise(rng, height, width)).save(path, format="PNG")


def first_file(folder: Path):
    """The first image of a class folder, as the folder sources order them (by name), given the class."""
    return lambda class_name: sorted(p for p in (folder / class_name).iterdir() if p.is_file())[0]


def make_omniglot(root: Path, rng: np.random.Generator) -> None:
    """Lake's two archives in miniature, noise images of 30x30 grey."""
    for part, alphabets in (("images_background", 3), ("images_evaluation", 2)):
        root.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(root / f"{part}.zip", "w") as zf:
            for a in range(alphabets):
                for c in range(2):
                    for d in range(3):
                        buffer = io.BytesIO()
                        Image.fromarray(noise(rng, 30, 30, channels=1)).save(buffer, format="PNG")
                        zf.writestr(f"{part}/alpha{a}/character{c + 1:02d}/{a}{c}_{d + 1:02d}.png", buffer.getvalue())


def dataset(option: str, root: Path) -> tuple[list[str], object]:
    """(overrides, the raw first image of a test class given its name) for ``data=option`` under ``root``."""
    rng = np.random.default_rng(0)
    images = [
        f"data.image_size={SIZE}",
        f"data.root={root}",
        f"data.cache_dir={root.parent / 'cache'}",
        "data.ways=2",
        "data.shots=1",
        "data.queries=1",
    ]
    if option == "omniglot":
        make_omniglot(root, rng)
        with zipfile.ZipFile(root / "images_evaluation.zip") as zf:
            members = sorted(zf.namelist())  # test = the evaluation archive's characters; files by name
            first = {
                name: zf.read(next(m for m in members if m.startswith(f"images_evaluation/{name}/")))
                for name in {m.split("/", 1)[1].rsplit("/", 1)[0] for m in members}
            }
        # class names read "alpha0/character01/rot000" (a rotation suffix, none under this split)
        return [*images, "data.split=background_evaluation", "data.source.val_characters=2"], lambda class_name: first[
            class_name.rsplit("/rot", 1)[0]
        ]
    if option in ("miniimagenet", "imagefolder"):
        for split in ("train", "val", "test"):
            for c in range(2):
                (root / split / f"class{c}").mkdir(parents=True)
                for i in range(2):
                    Image.fromarray(noise(rng, 21, 25)).save(root / split / f"class{c}" / f"img{i}.png")
        return images, first_file(root / "test")
    if option == "tieredimagenet":
        make_tiered_folders(root, {"train": 2, "val": 2, "test": 2}, images=2, size=24)
        noisy_folder_images(root, rng)
        return images, first_file(root / "test")
    if option == "cub":
        make_cub(root, {"train": 2, "val": 2, "test": 2}, images=2, size=20)
        noisy_folder_images(root, rng)
        return images, first_file(root / "CUB_200_2011" / "images")
    if option in ("cifarfs", "fc100"):
        make_cifar100(root, train_per_class=2, test_per_class=1)
        fine_names = [
            n.decode() for n in pickle.loads((root / "cifar-100-python" / "meta").read_bytes())[b"fine_label_names"]
        ]
        for name in ("train", "test"):  # noise pixels, labels kept
            path = root / "cifar-100-python" / name
            record = pickle.loads(path.read_bytes())
            record[b"data"] = rng.integers(0, 256, record[b"data"].shape, dtype=np.uint8)
            path.write_bytes(pickle.dumps(record, protocol=2))
        return images, lambda class_name: raw_cifar_image(root, fine_names, class_name)
    return [], None  # sinusoid, polynomial: numbers


def raw_cifar_image(root: Path, fine_names: list[str], class_name: str) -> Image.Image:
    """The class's first image of the pooled release (train file first), as a 32x32 picture."""
    for name in ("train", "test"):
        record = pickle.loads((root / "cifar-100-python" / name).read_bytes())
        rows = [i for i, f in enumerate(record[b"fine_labels"]) if fine_names[f] == class_name]
        if rows:
            return Image.fromarray(record[b"data"][rows[0]].reshape(3, 32, 32).transpose(1, 2, 0))
    raise AssertionError(class_name)


def make_run(cfg, run_dir: Path) -> Path:
    """A run directory as ``metaplus.load`` reads it: results.json's config and a checkpoint."""
    backbone = build_backbone(cfg.model, initialise=True)
    learner = instantiate_group(cfg.algo, "algo", backbone=backbone, task_type=cfg.data.task)
    (run_dir / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": learner.state_dict()}, run_dir / "checkpoints" / "last.ckpt")
    (run_dir / "results.json").write_text(json.dumps({"config": OmegaConf.to_container(cfg, resolve=True)}))
    return run_dir


def test_every_data_option_is_covered():
    assert {
        "sinusoid",
        "polynomial",
        "omniglot",
        "miniimagenet",
        "tieredimagenet",
        "cifarfs",
        "fc100",
        "cub",
        "imagefolder",
    } <= set(OPTIONS)


@pytest.mark.parametrize("option", OPTIONS)
def test_load_preprocess_is_the_training_pipeline(tmp_path, option):
    overrides, raw = dataset(option, tmp_path / "data")
    cfg = compose_config(["logger=none", f"data={option}", *overrides], tmp_path / "run")
    learner = metaplus.load(make_run(cfg, tmp_path / "run"))
    source = instantiate_group(cfg.data, "data").source("test")
    task = source.sample(torch.Generator().manual_seed(0))
    if raw is None:  # numbers: the tensor the task holds
        assert torch.equal(learner.preprocess(task.support_x.tolist()), task.support_x)
        return
    raw = raw(source.class_names[0])
    trained_on = source.images_at(torch.tensor([0]))  # row 0: the first image of the first class
    assert trained_on.shape[-2:] == (SIZE, SIZE)
    got = learner.preprocess(raw)
    assert got.shape == trained_on.shape and got.dtype == torch.float32
    assert torch.equal(got, trained_on), f"data={option}: max difference {(got - trained_on).abs().max():.3g}"


@pytest.mark.parametrize("layout", ["npz", "png"])
def test_tiered_pickled_layouts_resize_as_the_folders_do(tmp_path, layout):
    """Ren et al.'s arrays (84x84) at data.image_size=16: the same Lanczos resize as image files, so
    one preprocessing serves every layout."""
    root = tmp_path / "tiered"
    make_tiered_pickled(root, "test", classes=2, images=2, size=30, layout=layout)
    rng = np.random.default_rng(1)
    labels = pickle.loads((root / "test_labels.pkl").read_bytes())["label_specific"]
    pictures = [noise(rng, 30, 30) for _ in labels]
    if layout == "npz":
        np.savez(root / "test_images.npz", images=np.stack([p[..., ::-1] for p in pictures]))  # BGR, as cv2 writes
    else:
        encoded = []
        for p in pictures:
            buffer = io.BytesIO()
            Image.fromarray(p).save(buffer, format="PNG")
            encoded.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8).reshape(-1, 1))
        (root / "test_images_png.pkl").write_bytes(pickle.dumps(encoded))
    cfg = compose_config(
        [
            "logger=none",
            "data=tieredimagenet",
            f"data.root={root}",
            f"data.image_size={SIZE}",
            f"data.cache_dir={tmp_path / 'cache'}",
            "data.ways=2",
            "data.shots=1",
            "data.queries=1",
        ],
        tmp_path / "run",
    )
    learner = metaplus.load(make_run(cfg, tmp_path / "run"))
    source = instantiate_group(cfg.data, "data").source("test")
    first = int(np.flatnonzero(labels == 0)[0])  # row 0: class 0's first image in the file's order
    assert torch.equal(learner.preprocess(Image.fromarray(pictures[first])), source.images_at(torch.tensor([0])))


def test_a_source_module_without_preprocessing_is_an_error_not_a_float_conversion(tmp_path, monkeypatch):
    from metaplus.api import preprocessing
    from metaplus.data import sinusoid

    cfg = compose_config(["logger=none"], tmp_path / "run")
    monkeypatch.delattr(sinusoid, "preprocessing")
    with pytest.raises(
        ConfigError,
        match=r"data.source._target_.*metaplus.data.sinusoid defines no module-level "
        r"preprocessing",
    ):
        preprocessing(cfg)
