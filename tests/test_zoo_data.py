"""CIFAR-FS, FC100, tieredImageNet and CUB: loaders on tiny fixtures in the releases' exact formats
(metaplus/testing/zoo.py), split files, episodes, errors, and a few training iterations from the config.
"""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pytest
import torch

from metaplus.compose import compose_config
from metaplus.data.cifar import CifarTasks
from metaplus.data.class_splits import read_split
from metaplus.data.cub import CUBTasks
from metaplus.data.errors import CorruptDatasetError, CorruptImageError, DatasetNotFoundError
from metaplus.data.tieredimagenet import TieredImageNetTasks
from metaplus.testing import QUICK
from metaplus.testing.zoo import (
    CIFAR100_SUPERCLASSES,
    FINE_NAMES,
    cifar_pixel,
    class_value,
    make_cifar100,
    make_cub,
    make_tiered_folders,
    make_tiered_pickled,
)

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return make_cifar100(tmp_path_factory.mktemp("cifar"))


# -- the shipped split files -------------------------------------------------------------------------
def test_split_files_have_the_published_sizes_and_are_disjoint():
    sizes = {d: [len(read_split(d, s)) for s in SPLITS] for d in ("cifarfs", "fc100", "tieredimagenet", "cub")}
    assert sizes == {
        "cifarfs": [64, 16, 20],
        "fc100": [12, 4, 4],
        "tieredimagenet": [351, 97, 160],
        "cub": [100, 50, 50],
    }
    for dataset in sizes:
        names = [set(read_split(dataset, s)) for s in SPLITS]
        assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2]), dataset
    assert set().union(*(read_split("cifarfs", s) for s in SPLITS)) == set(FINE_NAMES)
    assert set().union(*(read_split("fc100", s) for s in SPLITS)) == set(CIFAR100_SUPERCLASSES)
    # CUB: Chen et al.'s rule on the sorted folder names (train even, val i%4==1, test i%4==3)
    every = sorted(set().union(*(read_split("cub", s) for s in SPLITS)))
    assert len(every) == 200 and every[0] == "001.Black_footed_Albatross" and every[-1] == "200.Common_Yellowthroat"
    assert read_split("cub", "train") == every[0::2] and read_split("cub", "val") == every[1::4]
    assert read_split("cub", "test") == every[3::4]
    assert all(len(w) == 9 and w.startswith("n") for s in SPLITS for w in read_split("tieredimagenet", s))


# -- CIFAR-FS and FC100 ------------------------------------------------------------------------------
def test_cifarfs_reads_the_release_pools_train_and_test_and_labels_correctly(cifar_root, tmp_path):
    sources = {
        s: CifarTasks(5, 1, 2, root=str(cifar_root), class_split="cifarfs", cache_dir=str(tmp_path), split=s)
        for s in SPLITS
    }
    assert {s: src.num_classes for s, src in sources.items()} == {"train": 64, "val": 16, "test": 20}
    for split, source in sources.items():
        assert source.class_names == sorted(read_split("cifarfs", split))
        assert bool((source.data.counts == 6).all()) and source.data.images.shape[1:] == (3, 32, 32)
        for c, name in enumerate(source.class_names):
            images = source.data.of_class(c)
            fine = FINE_NAMES.index(name)
            assert bool((images[:, 0] == 2 * fine).all()), f"{name}: an image of another class"
            # train images (blue 7) then test images (blue 107), each in its file's order of appearance
            assert images[:, 2, 0, 0].tolist() == [7] * 4 + [107] * 2
            assert sorted(images[:4, 1, 0, 0].tolist()) == [cifar_pixel(fine, i, False)[1] for i in range(4)]
    task = sources["val"].sample(torch.Generator().manual_seed(0))
    assert task.support_x.shape == (5, 3, 32, 32) and task.query_x.shape == (10, 3, 32, 32)
    assert sorted(task.query_y.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # normalised with CIFAR-100's statistics: red of class 'apple' (fine 0) is (0 - 0.5071) / 0.2673
    apple = CifarTasks(2, 1, 1, root=str(cifar_root), split="train").images_at(torch.tensor([0]))
    assert apple[0, 0, 0, 0].item() == pytest.approx((0 - 0.5071) / 0.2673, rel=1e-5)
    # the disk cache serves the next source
    assert len(list(tmp_path.glob("cifarfs-train-32px-*.pt"))) == 1


def test_fc100_splits_by_superclass(cifar_root):
    sources = {s: CifarTasks(5, 1, 1, root=str(cifar_root), class_split="fc100", split=s) for s in SPLITS}
    assert {s: src.num_classes for s, src in sources.items()} == {"train": 60, "val": 20, "test": 20}
    for split, source in sources.items():
        expected = sorted(f for c in read_split("fc100", split) for f in CIFAR100_SUPERCLASSES[c])
        assert source.class_names == expected
    assert "whale" in sources["test"].class_names and "shark" in sources["train"].class_names


def test_cifar_resizes_and_limits_when_asked(cifar_root):
    source = CifarTasks(
        2,
        1,
        1,
        root=str(cifar_root / "cifar-100-python"),
        image_size=16,
        max_classes=3,
        max_images_per_class=2,
        split="test",
    )
    assert (
        source.data.images.shape == (6, 3, 16, 16) and source.class_names == sorted(read_split("cifarfs", "test"))[:3]
    )
    for c, name in enumerate(source.class_names):  # flat planes keep their value through the resize
        assert bool((source.data.of_class(c)[:, 0] == 2 * FINE_NAMES.index(name)).all())
        assert source.data.of_class(c)[:, 2, 0, 0].tolist() == [7, 7], "the first 2 images: the train file's"


def test_missing_cifar_names_the_path_and_where_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        CifarTasks(5, 1, 1, root=str(tmp_path / "nowhere"), split="train")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in message and "{train,test,meta}" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message


class Boom:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_pickles_cannot_run_code_and_damage_is_named(tmp_path):
    root = make_cifar100(tmp_path / "evil", train_per_class=1, test_per_class=1)
    (root / "cifar-100-python" / "meta").write_bytes(pickle.dumps({b"fine_label_names": Boom()}))
    with pytest.raises(CorruptDatasetError, match=r"cifar-100-python/meta.*builtins\.print.*not allowed"):
        CifarTasks(2, 1, 1, root=str(root), split="train")
    root = make_cifar100(tmp_path / "cut", train_per_class=1, test_per_class=1)
    train = root / "cifar-100-python" / "train"
    train.write_bytes(train.read_bytes()[:500])
    with pytest.raises(CorruptDatasetError, match=r"cannot read .*cifar-100-python/train"):
        CifarTasks(2, 1, 1, root=str(root), split="train")
    root = make_cifar100(tmp_path / "cifar10", train_per_class=1, test_per_class=1)
    (root / "cifar-100-python" / "test").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(CorruptDatasetError, match=r"cifar-100-python/test lacks \['coarse_labels', 'fine_labels'\]"):
        CifarTasks(2, 1, 1, root=str(root), split="train")


# -- tieredImageNet --------------------------------------------------------------------------------
def test_tiered_folders_match_the_split_files(tmp_path):
    classes = make_tiered_folders(tmp_path / "tiered", {"train": 4, "val": 3, "test": 3})
    for split in SPLITS:
        source = TieredImageNetTasks(3, 1, 2, root=str(tmp_path / "tiered"), image_size=20, split=split)
        assert source.class_names == classes[split] == read_split("tieredimagenet", split)[: len(classes[split])]
        assert source.data.images.shape == (4 * len(classes[split]), 3, 20, 20)
        for c in range(source.num_classes):
            red = source.data.of_class(c)[:, 0].float().mean().item()
            assert abs(red - class_value(c)) < 3, "a flat JPEG decodes to its colour within rounding"
        task = source.sample(torch.Generator().manual_seed(1))
        assert task.support_x.shape == (3, 3, 20, 20) and task.query_x.shape == (6, 3, 20, 20)
    stranger = tmp_path / "tiered" / "val" / read_split("tieredimagenet", "train")[0]
    stranger.mkdir()
    with pytest.raises(CorruptDatasetError, match=rf"not tieredImageNet 'val' classes.*{stranger.name}"):
        TieredImageNetTasks(3, 1, 2, root=str(tmp_path / "tiered"), split="val")


@pytest.mark.parametrize("layout", ["png", "npz"])
def test_tiered_pickled_release(tmp_path, layout):
    names = make_tiered_pickled(tmp_path, "val", classes=3, images=4, size=84, layout=layout)
    source = TieredImageNetTasks(3, 1, 3, root=str(tmp_path), split="val", cache_dir=str(tmp_path / "cache"))
    assert source.class_names == names and source.data.images.shape == (12, 3, 84, 84)
    for c in range(3):
        images = source.data.of_class(c)
        # exact colours: RGB in both layouts (the npz's BGR order is undone)
        assert bool((images[:, 0] == class_value(c)).all()) and bool((images[:, 1] == 255 - class_value(c)).all())
        assert bool((images[:, 2] == 60).all())
    task = source.sample(torch.Generator().manual_seed(0))
    assert task.support_x.shape == (3, 3, 84, 84) and task.query_x.shape == (9, 3, 84, 84)


def test_tiered_missing_and_corrupt_files_are_named(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        TieredImageNetTasks(5, 1, 1, root=str(tmp_path), split="test")
    message = str(err.value)
    assert str(tmp_path / "test") in message and "test_labels.pkl" in message and "test_images_png.pkl" in message
    assert "few-shot-ssl-public" in message
    make_tiered_pickled(tmp_path, "test", classes=2, images=3, size=8)
    encoded = pickle.loads((tmp_path / "test_images_png.pkl").read_bytes())
    encoded[1] = np.frombuffer(b"not a png at all", dtype=np.uint8)
    (tmp_path / "test_images_png.pkl").write_bytes(pickle.dumps(encoded))
    with pytest.raises(CorruptImageError, match=r"test_images_png\.pkl\[1\]"):
        TieredImageNetTasks(2, 1, 1, root=str(tmp_path), image_size=8, split="test")


# -- CUB ---------------------------------------------------------------------------------------------
def test_cub_reads_the_official_layout_with_chens_split(tmp_path, caplog):
    classes = make_cub(tmp_path, {"train": 4, "val": 3, "test": 3})
    for split in SPLITS:
        with caplog.at_level(logging.WARNING, logger="metaplus"):
            source = CUBTasks(3, 1, 2, root=str(tmp_path), image_size=24, split=split)
        missing = 100 - 4 if split == "train" else 50 - 3
        assert f"{missing} of the {100 if split == 'train' else 50} classes of the split are missing" in caplog.text
        assert source.class_names == classes[split] == read_split("cub", split)[: len(classes[split])]
        assert source.data.images.shape == (4 * len(classes[split]), 3, 24, 24)
        for c in range(source.num_classes):
            assert abs(source.data.of_class(c)[:, 0].float().mean().item() - class_value(c)) < 3
        task = source.sample(torch.Generator().manual_seed(2))
        assert task.support_x.shape == (3, 3, 24, 24) and sorted(task.support_y.tolist()) == [0, 1, 2]
    assert classes["train"][:2] == ["001.Black_footed_Albatross", "003.Sooty_Albatross"]
    assert classes["val"][0] == "002.Laysan_Albatross" and classes["test"][0] == "004.Groove_billed_Ani"
    (tmp_path / "CUB_200_2011" / "images" / "201.Dodo").mkdir()
    with pytest.raises(CorruptDatasetError, match=r"not CUB-200-2011 classes: \['201\.Dodo'\]"):
        CUBTasks(3, 1, 2, root=str(tmp_path), split="train")


def test_missing_cub_names_the_path_and_where_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        CUBTasks(5, 1, 1, root=str(tmp_path), split="val")
    message = str(err.value)
    assert str(tmp_path / "CUB_200_2011" / "images") in message and "<NNN.Class_name>/*.jpg" in message
    assert "cub_200_2011" in message


# -- training from the config --------------------------------------------------------------------
def fixture_overrides(dataset: str, root) -> list[str]:
    if dataset in ("cifarfs", "fc100"):
        make_cifar100(root, train_per_class=3, test_per_class=1)
        return [f"data={dataset}", "data.image_size=16"]
    if dataset == "tieredimagenet":
        make_tiered_folders(root, {"train": 3, "val": 2, "test": 2}, images=4, size=20)
        return ["data=tieredimagenet", "data.image_size=16"]
    make_cub(root, {"train": 3, "val": 2, "test": 2}, images=4, size=20)
    return ["data=cub", "data.image_size=16"]


@pytest.mark.parametrize("algo", ["maml", "anil"])
@pytest.mark.parametrize("dataset", ["cifarfs", "fc100", "tieredimagenet", "cub"])
def test_a_few_training_iterations_from_the_config(tmp_path, dataset, algo):
    from metaplus.run import run

    root = tmp_path / "data"
    overrides = [
        *QUICK,
        f"algo={algo}",
        *fixture_overrides(dataset, root),
        f"data.root={root}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "model=conv4",
        "model.filters=4",
        "data.ways=2",
        "data.shots=1",
        "data.queries=2",
        "data.batches_per_epoch=2",
        "data.meta_batch_size=2",
        "data.val_episodes=2",
        "data.test_episodes=2",
        "algo.test_inner_steps=2",
    ]
    metrics = run(compose_config(overrides, tmp_path / "run"))
    assert metrics["test/episodes"] == 2 and (tmp_path / "run" / "results.json").is_file()
