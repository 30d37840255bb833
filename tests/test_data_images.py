"""Image sources: Omniglot, mini-ImageNet and image folders, their caches, episodes and errors.

Real-data tests read $METAPLUS_DATA (or ../shared/data beside the repository) and are skipped when it is absent; the
formats are also tested on tiny synthetic image sets written to tmp_path. Decoded real data is
cached under pytest's cache folder so that only the first session pays for decoding.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest
import torch

from metaplus.compose import compose_config
from metaplus.config import ConfigError, instantiate_group
from metaplus.data import omniglot as omniglot_module
from metaplus.data.class_images import ClassImages
from metaplus.data.errors import CorruptDatasetError, CorruptImageError, DatasetNotFoundError
from metaplus.data.imagefolder import ImageFolderTasks
from metaplus.data.miniimagenet import MiniImageNetTasks
from metaplus.data.omniglot import OmniglotTasks
from metaplus.data.sampler import ImageEpisodes
from metaplus.testing import DATA, OMNIGLOT, QUICK, REPO, needs_omniglot, recompute_test_metric
from metaplus.testing.zoo import make_class_folders, make_omniglot_zip, write_png

MINI = DATA / "miniimagenet" if DATA else None
needs_mini = pytest.mark.skipif(
    MINI is None or not (MINI / "val").is_dir(),
    reason="shared mini-ImageNet val split absent (set $METAPLUS_DATA or provide ../shared/data/miniimagenet)",
)


# -- synthetic data --------------------------------------------------------------------------------
def ided_images(counts: list[int]) -> ClassImages:
    """Grey 4x4 images whose first two pixels encode a unique image id (id = 256 * p0 + p1)."""
    ids = torch.arange(sum(counts))
    images = torch.zeros(len(ids), 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = ids // 256, ids % 256
    return ClassImages(images, torch.tensor(counts), [f"c{i}" for i in range(len(counts))])


def image_ids(x: torch.Tensor) -> list[int]:
    pixels = (x[:, 0, 0, :2] * 255).round().long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


# -- episode invariants ----------------------------------------------------------------------------
def test_episodes_have_the_right_shapes_labels_and_disjoint_sets():
    source = ImageEpisodes(ided_images([6] * 10), ways=4, shots=2, queries=3)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        task = source.sample(g)
        assert task.support_x.shape == (8, 1, 4, 4) and task.query_x.shape == (12, 1, 4, 4)
        assert sorted(task.support_y.tolist()) == sorted(list(range(4)) * 2)
        assert sorted(task.query_y.tolist()) == sorted(list(range(4)) * 3)
        support, query = image_ids(task.support_x), image_ids(task.query_x)
        assert not set(support) & set(query) and len(set(support + query)) == 20
        # every image belongs to the global class its label stands for, the same in both sets
        for ids, labels, classes in (
            (support, task.support_y, task.support_classes),
            (query, task.query_y, task.query_classes),
        ):
            assert [i // 6 for i in ids] == classes.tolist()
            mapping = dict(zip(labels.tolist(), classes.tolist()))
            assert len(set(mapping.values())) == 4
        assert dict(zip(task.support_y.tolist(), task.support_classes.tolist())) == dict(
            zip(task.query_y.tolist(), task.query_classes.tolist())
        )


def test_label_order_is_random_and_sampling_is_reproducible():
    source = ImageEpisodes(ided_images([5] * 8), ways=3, shots=1, queries=1)
    orders = set()
    for seed in range(30):
        task = source.sample(torch.Generator().manual_seed(seed))
        orders.add(tuple(task.support_classes.tolist()))
        again = source.sample(torch.Generator().manual_seed(seed))
        assert torch.equal(task.support_x, again.support_x) and torch.equal(task.query_y, again.query_y)
    increasing = [o for o in orders if list(o) == sorted(o)]
    assert len(orders) > 20 and len(increasing) < len(orders) / 2, "labels must not follow class order"


def test_unequal_class_sizes_never_pick_another_class_image():
    counts = [3, 9, 4, 20]
    source = ImageEpisodes(ided_images(counts), ways=4, shots=1, queries=2)
    starts = torch.cumsum(torch.tensor([0] + counts), 0).tolist()
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        task = source.sample(g)
        for ids, classes in (
            (image_ids(task.support_x), task.support_classes),
            (image_ids(task.query_x), task.query_classes),
        ):
            for i, c in zip(ids, classes.tolist()):
                assert starts[c] <= i < starts[c + 1]


def test_impossible_episodes_fail_naming_the_key():
    with pytest.raises(ConfigError, match="source.ways.*at most the 3 classes"):
        ImageEpisodes(ided_images([5] * 3), ways=4, shots=1, queries=1)
    with pytest.raises(ConfigError, match="source.shots.*'c1'.*only 2"):
        ImageEpisodes(ided_images([5, 2, 5]), ways=2, shots=1, queries=2)


def test_normalisation_uses_per_channel_mean_and_std(tmp_path):
    root = make_class_folders(tmp_path / "rgb", classes=12, per_class=3, mode="RGB")
    source = ImageFolderTasks(
        2,
        1,
        1,
        root=str(root),
        class_split="ratios",
        ratios=[0.5, 0.25, 0.25],
        image_size=12,
        mean=[0.5, 0.25, 0.0],
        std=[0.5, 0.25, 2.0],
        split="train",
    )
    raw = source.data.images[:1].float() / 255
    expected = (raw - torch.tensor([0.5, 0.25, 0.0]).view(3, 1, 1)) / torch.tensor([0.5, 0.25, 2.0]).view(3, 1, 1)
    assert torch.allclose(source.images_at(torch.tensor([0])), expected, atol=1e-6)


# -- Omniglot --------------------------------------------------------------------------------------
@needs_omniglot
def test_omniglot_vinyals_split_on_the_shared_data(cache_dir):
    sources = {
        s: OmniglotTasks(5, 1, 5, root=str(OMNIGLOT), cache_dir=str(cache_dir), split=s)
        for s in ("train", "val", "test")
    }
    assert {s: src.num_classes for s, src in sources.items()} == {"train": 4112, "val": 688, "test": 1692}
    characters = {s: {n.rsplit("/", 1)[0] for n in src.class_names} for s, src in sources.items()}
    assert not characters["train"] & characters["val"] and not characters["val"] & characters["test"]
    assert not characters["train"] & characters["test"]
    train = sources["train"]
    assert train.data.images.shape == (4112 * 20, 1, 28, 28) and bool((train.data.counts == 20).all())
    # rotations are classes of their own, rotated copies of the unrotated character
    name = train.class_names[0]
    assert name.endswith("rot000") and train.class_names[1] == name.replace("rot000", "rot090")
    assert torch.equal(train.data.of_class(1), torch.rot90(train.data.of_class(0), 1, dims=(-2, -1)))
    task = train.sample(torch.Generator().manual_seed(0))
    assert task.support_x.shape == (5, 1, 28, 28) and task.query_x.shape == (25, 1, 28, 28)
    pixels = task.support_x * 255  # each support image is a cached uint8 image scaled by 1/255
    assert torch.allclose(pixels, pixels.round(), atol=1e-4)
    cached = train.data.images.flatten(1)
    for image in pixels.round().to(torch.uint8).flatten(1):
        assert bool((cached == image).all(dim=1).any())
    assert task.support_x.mean() < 0.5, "strokes are 1 on a 0 background (inverted, as in MAML)"


@needs_omniglot
def test_omniglot_background_evaluation_split(cache_dir):
    sources = {
        s: OmniglotTasks(
            20, 1, 1, root=str(OMNIGLOT), class_split="background_evaluation", cache_dir=str(cache_dir), split=s
        )
        for s in ("train", "val", "test")
    }
    assert {s: src.num_classes for s, src in sources.items()} == {"train": 864, "val": 100, "test": 659}
    names = {s: set(src.class_names) for s, src in sources.items()}
    assert not names["train"] & names["val"] and not (names["train"] | names["val"]) & names["test"]


def test_omniglot_from_zip_and_folder_agree_and_the_cache_is_reused(tmp_path, monkeypatch):
    root = tmp_path / "omniglot"
    make_omniglot_zip(root, "images_background", alphabets=3, characters=4)
    make_omniglot_zip(root, "images_evaluation", alphabets=2, characters=3)
    cache = tmp_path / "cache"
    args = dict(
        ways=2,
        shots=1,
        queries=1,
        root=str(root),
        class_split="background_evaluation",
        val_characters=2,
        image_size=14,
        cache_dir=str(cache),
    )
    from_zip = OmniglotTasks(**args, split="train")
    assert from_zip.num_classes == 10 and from_zip.data.images.shape == (40, 1, 14, 14)
    assert len(list(cache.glob("omniglot-images_background-14px-*.pt"))) == 1

    # the disk cache serves a new process (simulated: in-memory copy dropped, decoding forbidden)
    omniglot_module._PARTS_IN_MEMORY.clear()

    def no_decoding(*_, **__):
        raise AssertionError("decoded again although the cache is valid")

    monkeypatch.setattr(omniglot_module, "decode_classes", no_decoding)
    assert torch.equal(OmniglotTasks(**args, split="train").data.images, from_zip.data.images)

    # a changed archive invalidates the cache
    make_omniglot_zip(root, "images_background", alphabets=3, characters=5)
    omniglot_module._PARTS_IN_MEMORY.clear()
    with pytest.raises(AssertionError, match="decoded again"):
        OmniglotTasks(**args, split="train")
    monkeypatch.undo()
    rebuilt = OmniglotTasks(**args, split="train")
    assert rebuilt.num_classes == 13
    assert len(list(cache.glob("omniglot-images_background-14px-*.pt"))) == 1, "the stale cache is removed"

    # the extracted folders give the same images
    folder_root = tmp_path / "extracted"
    for part in ("images_background", "images_evaluation"):
        with zipfile.ZipFile(root / f"{part}.zip") as zf:
            zf.extractall(folder_root)
    from_folder = OmniglotTasks(**{**args, "root": str(folder_root)}, split="train")
    assert from_folder.class_names == rebuilt.class_names
    assert torch.equal(from_folder.data.images, rebuilt.data.images)


def test_missing_omniglot_names_the_path_and_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        OmniglotTasks(5, 1, 1, root=str(tmp_path / "nowhere"), split="train")
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "images_background.zip") in message
    assert "data.download=true" in message and "github.com/brendenlake/omniglot" in message


def test_missing_vinyals_split_file_is_named(tmp_path):
    make_omniglot_zip(tmp_path, "images_background", alphabets=1, characters=2)
    make_omniglot_zip(tmp_path, "images_evaluation", alphabets=1, characters=2)
    with pytest.raises(DatasetNotFoundError, match=r"splits/vinyals/val\.txt.*data\.download=true"):
        OmniglotTasks(2, 1, 1, root=str(tmp_path), split="val")


def test_corrupt_omniglot_image_names_the_file(tmp_path):
    make_omniglot_zip(tmp_path, "images_evaluation", alphabets=1, characters=2)
    with zipfile.ZipFile(tmp_path / "images_background.zip", "w") as zf:
        zf.writestr("images_background/Bad/character01/0001_01.png", b"not a png")
    with pytest.raises(
        CorruptImageError, match=r"images_background\.zip:images_background/Bad/character01/0001_01\.png"
    ):
        OmniglotTasks(2, 1, 1, root=str(tmp_path), class_split="background_evaluation", split="train")


# -- mini-ImageNet ---------------------------------------------------------------------------------
@needs_mini
def test_miniimagenet_subset_from_the_shared_folders(tmp_path):
    source = MiniImageNetTasks(
        3, 2, 3, root=str(MINI), cache_dir=str(tmp_path), max_classes=4, max_images_per_class=6, split="val"
    )
    assert source.num_classes == 4 and source.data.images.shape == (24, 3, 84, 84)
    assert source.class_names == sorted(p.name for p in (MINI / "val").iterdir())[:4]
    task = source.sample(torch.Generator().manual_seed(0))
    assert task.support_x.shape == (6, 3, 84, 84) and task.query_x.shape == (9, 3, 84, 84)
    assert -3 < float(task.query_x.mean()) < 3 and task.query_x.std() > 0.3, "ImageNet-normalised"
    test = MiniImageNetTasks(3, 1, 1, root=str(MINI), max_classes=3, max_images_per_class=2, split="test")
    assert not set(test.class_names) & set(source.class_names)


@needs_mini
def test_missing_miniimagenet_split_is_named():
    if (MINI / "train").is_dir():
        pytest.skip("the shared mini-ImageNet now has its train split")
    with pytest.raises(DatasetNotFoundError) as err:
        MiniImageNetTasks(5, 1, 1, root=str(MINI), split="train")
    message = str(err.value)
    assert "split 'train'" in message and str(MINI / "train") in message and "train.csv" in message
    assert "meta-learning-lstm" in message


@needs_mini
@pytest.mark.slow
def test_miniimagenet_full_val_split_cache(cache_dir):
    source = MiniImageNetTasks(5, 5, 15, root=str(MINI), cache_dir=str(cache_dir), split="val")
    assert source.num_classes == 16 and source.data.images.shape == (9600, 3, 84, 84)
    assert bool((source.data.counts == 600).all())


def test_miniimagenet_ravi_csv_layout(tmp_path):
    root = tmp_path / "mini"
    rows = ["filename,label"]
    for c, wnid in enumerate(["n001", "n002", "n003"]):
        for i in range(4):
            name = f"{wnid}{i:08d}.jpg"
            write_png(root / "images" / name, 40 * c + i, size=20, mode="RGB")
            rows.append(f"{name},{wnid}")
    (root / "test.csv").write_text("\n".join(rows) + "\n")
    source = MiniImageNetTasks(2, 1, 2, root=str(root), image_size=16, split="test")
    assert source.class_names == ["n001", "n002", "n003"] and source.data.images.shape == (12, 3, 16, 16)
    (root / "images" / "n00200000001.jpg").unlink()
    with pytest.raises(DatasetNotFoundError, match="n00200000001.jpg"):
        MiniImageNetTasks(2, 1, 2, root=str(root), image_size=16, split="test")


def test_miniimagenet_folder_that_disagrees_with_its_csv_fails(tmp_path):
    root = tmp_path / "mini"
    make_class_folders(root / "val", classes=2, per_class=3)
    (root / "val.csv").write_text("filename,label\nx.jpg,class00\ny.jpg,n999\n")
    with pytest.raises(CorruptDatasetError, match=r"missing \['n999'\].*unexpected \['class01'\]"):
        MiniImageNetTasks(2, 1, 1, root=str(root), image_size=12, split="val")


# -- image folders ---------------------------------------------------------------------------------
def test_imagefolder_ratio_split_is_seeded_disjoint_and_complete(tmp_path):
    root = make_class_folders(tmp_path / "set", classes=10, per_class=3, mode="L")
    args = dict(
        ways=2,
        shots=1,
        queries=1,
        root=str(root),
        class_split="ratios",
        ratios=[0.5, 0.25, 0.25],
        image_size=8,
        channels=1,
        cache_dir=str(tmp_path / "cache"),
    )
    names = {s: ImageFolderTasks(**args, split=s).class_names for s in ("train", "val", "test")}
    # Independently: sha256("<seed>/<name>") as a fraction of 2**64, cut at the cumulative ratios.
    expected = {"train": [], "val": [], "test": []}
    for c in range(10):
        u = int(hashlib.sha256(f"0/class{c:02d}".encode()).hexdigest()[:16], 16) / 2**64
        expected["train" if u < 0.5 else "val" if u < 0.75 else "test"].append(f"class{c:02d}")
    assert names == expected
    assert sorted(names["train"] + names["val"] + names["test"]) == [f"class{c:02d}" for c in range(10)]
    assert ImageFolderTasks(**args, split="val").class_names == names["val"]
    other_seed = {s: ImageFolderTasks(**args, split_seed=1, split=s).class_names for s in ("train", "val", "test")}
    assert other_seed != names
    assert ImageFolderTasks(**args, split="train").data.images.shape == (3 * len(names["train"]), 1, 8, 8)


def test_imagefolder_adding_a_class_keeps_every_other_class_in_its_split(tmp_path):
    root = make_class_folders(tmp_path / "set", classes=24, per_class=2, mode="L")
    args = dict(ways=2, shots=1, queries=1, root=str(root), class_split="ratios", image_size=8, channels=1)
    before = {s: set(ImageFolderTasks(**args, split=s).class_names) for s in ("train", "val", "test")}
    make_class_folders(tmp_path / "extra", classes=1, per_class=2, mode="L")
    (tmp_path / "extra" / "class00").rename(root / "aaa_new_class")  # sorts first: shifts every index
    after = {s: set(ImageFolderTasks(**args, split=s).class_names) for s in ("train", "val", "test")}
    for split in before:
        assert before[split] <= after[split], f"a class left the {split} split when one class was added"
    assert sum(len(after[s]) for s in after) == 25 and sum(len(after[s] - before[s]) for s in after) == 1


def test_imagefolder_reports_skipped_files_and_empty_folders_in_one_warning(tmp_path, recwarn):
    root = make_class_folders(tmp_path / "set", classes=12, per_class=2, mode="L")
    (root / "class03" / "notes.txt").write_text("not an image")
    (root / "class05" / "labels.csv").write_text("x")
    (root / "empty_class").mkdir()
    (root / "only_text").mkdir()
    (root / "only_text" / "readme.md").write_text("x")
    ImageFolderTasks(2, 1, 1, root=str(root), class_split="ratios", image_size=8, channels=1, split="train")
    messages = [str(w.message) for w in recwarn if "image folder" in str(w.message)]
    assert len(messages) == 1, messages
    assert (
        "skipped 3 entries that are not images (class03/notes.txt, class05/labels.csv, only_text/readme.md) "
        "and 2 class folders without images (empty_class, only_text)"
    ) in messages[0]
    ImageFolderTasks(2, 1, 1, root=str(root), class_split="ratios", image_size=8, channels=1, split="test")
    assert len([w for w in recwarn if "image folder" in str(w.message)]) == 1, "the val/test sources do not repeat it"


def test_imagefolder_split_by_folders(tmp_path):
    root = tmp_path / "set"
    for split, classes in (("train", 4), ("val", 2)):
        make_class_folders(root / split, classes=classes, per_class=2, suffix=".jpg")
    train = ImageFolderTasks(2, 1, 1, root=str(root), image_size=8, split="train")  # auto -> folders
    assert train.num_classes == 4 and train.data.images.shape == (8, 3, 8, 8)
    with pytest.raises(DatasetNotFoundError, match=r"split 'test' not found: looked for .*set/test"):
        ImageFolderTasks(2, 1, 1, root=str(root), image_size=8, split="test")


def test_corrupt_image_names_the_file(tmp_path):
    root = make_class_folders(tmp_path / "set" / "train", classes=3, per_class=2)
    bad = root / "class01" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(CorruptImageError, match=str(bad)):
        ImageFolderTasks(2, 1, 1, root=str(tmp_path / "set"), image_size=8, split="train")


# -- through the config and the datamodule ---------------------------------------------------------
@needs_omniglot
def test_fixed_val_and_test_episodes_are_identical_across_datamodules(tmp_path, cache_dir):
    def batches(seed):
        cfg = compose_config(
            [
                f"seed={seed}",
                "data=omniglot",
                f"data.root={OMNIGLOT}",
                f"data.cache_dir={cache_dir}",
                "data.ways=20",
                "data.queries=5",
                "data.val_episodes=4",
                "data.test_episodes=4",
            ],
            tmp_path / str(seed),
        )
        datamodule = instantiate_group(cfg.data, "data")
        datamodule.setup()
        return [
            next(iter(loader()))
            for loader in (datamodule.val_dataloader, datamodule.test_dataloader, datamodule.train_dataloader)
        ]

    (val_a, test_a, train_a), (val_b, test_b, train_b) = batches(1), batches(2)
    for a, b in ((val_a, val_b), (test_a, test_b)):
        assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
        assert torch.equal(a.query_classes, b.query_classes)
    assert test_a.support_x.shape == (4, 20, 1, 28, 28) and test_a.query_x.shape == (4, 100, 1, 28, 28)
    assert not torch.equal(train_a.support_classes, train_b.support_classes), "training tasks follow the run seed"


def test_miniimagenet_config_reports_a_missing_split_before_training(tmp_path):
    cfg = compose_config(["data=miniimagenet", f"data.root={tmp_path / 'mini'}"], tmp_path / "run")
    datamodule = instantiate_group(cfg.data, "data")
    with pytest.raises(DatasetNotFoundError, match="split 'train' not found"):
        datamodule.setup("fit")
    assert tuple(datamodule.input_shape) == (3, 84, 84) and datamodule.output_dim == 5


@needs_omniglot
def test_two_training_iterations_on_omniglot(tmp_path, cache_dir):
    from metaplus.run import run

    model = ["model=conv4", "model.filters=8"] if (REPO / "conf" / "model" / "conv4.yaml").is_file() else ["model=mlp"]
    overrides = [
        *QUICK,
        "data=omniglot",
        f"data.root={OMNIGLOT}",
        f"data.cache_dir={cache_dir}",
        *model,
        "data.batches_per_epoch=2",
        "data.meta_batch_size=2",
        "data.val_episodes=4",
        "data.test_episodes=4",
    ]
    cfg = compose_config(overrides, tmp_path / "run")
    metrics = run(cfg)
    assert metrics["test/episodes"] == 4
    # the fraction of arg-max hits over the 4 fixed episodes, recomputed from the checkpoint
    after, before = recompute_test_metric(cfg, metrics["best_checkpoint"])
    assert metrics["test/acc"] == pytest.approx(after, abs=1e-6)
    assert metrics["test/acc_step0"] == pytest.approx(before, abs=1e-6)
    assert (tmp_path / "run" / "results.json").is_file()


@needs_omniglot
def test_mamlpp_rotation_augmentation_rotates_whole_training_classes(cache_dir):
    common = dict(ways=5, shots=2, queries=3, root=str(OMNIGLOT), cache_dir=str(cache_dir))
    plain = OmniglotTasks(**common, split="train")
    rotated = OmniglotTasks(**common, split="train", augment_rotations=True)
    seed = 11
    a, b = plain.sample(torch.Generator().manual_seed(seed)), rotated.sample(torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    plain.sample(g)  # the augmentation draws its quarter turns after the episode itself
    turns = torch.randint(0, 4, (5,), generator=g)
    assert torch.equal(a.support_y, b.support_y) and torch.equal(a.support_classes, b.support_classes)
    for label, k in enumerate(turns.tolist()):
        for x_plain, y, x_rot in ((a.support_x, a.support_y, b.support_x), (a.query_x, a.query_y, b.query_x)):
            rows = y == label
            assert torch.equal(x_rot[rows], torch.rot90(x_plain[rows], k, dims=(-2, -1)))
    assert set(turns.tolist()) != {0}, "this seed must rotate some class for the test to mean anything"
    # validation and test episodes are never augmented: they stay the fixed published episodes
    val_plain = OmniglotTasks(**common, split="val").sample(torch.Generator().manual_seed(seed))
    val_aug = OmniglotTasks(**common, split="val", augment_rotations=True).sample(torch.Generator().manual_seed(seed))
    assert torch.equal(val_plain.query_x, val_aug.query_x)


# -- what a first decode says (issue 28) -------------------------------------------------------------
def decoding_lines(caplog) -> list[tuple[int, str, str]]:
    """(images, per-image shape, cache file) of each 'decoding ...' line logged."""
    import re

    found = []
    for record in caplog.records:
        match = re.match(
            r"decoding \S+: ([\d,]+) images of (\S+) \(~[\d.]+ [kMG]?B\) into (\S+), once", record.getMessage()
        )
        if record.getMessage().startswith("decoding"):
            assert match, record.getMessage()
            found.append((int(match.group(1).replace(",", "")), match.group(2), match.group(3)))
    return found


def test_a_first_decode_says_what_where_and_how_big_and_a_cached_one_says_nothing(tmp_path, caplog):
    import logging

    make_class_folders(tmp_path / "set" / "val", classes=3, per_class=4, mode="RGB")
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="metaplus"):
        source = MiniImageNetTasks(
            2, 1, 1, root=str(tmp_path / "set"), image_size=12, cache_dir=str(cache), split="val"
        )
    [(count, shape, where)] = decoding_lines(caplog)
    [written] = cache.glob("*.pt")
    assert (count, shape, Path(where)) == (12, "3x12x12", written)
    assert source.data.images.shape == (12, 3, 12, 12)
    from metaplus.data.cache import readable_bytes

    assert f"(~{readable_bytes(source.data.images.numel())})" in caplog.records[-1].getMessage()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="metaplus"):
        MiniImageNetTasks(2, 1, 1, root=str(tmp_path / "set"), image_size=12, cache_dir=str(cache), split="val")
    assert decoding_lines(caplog) == [], "a cached split is loaded silently"
    with caplog.at_level(logging.INFO, logger="metaplus"):
        MiniImageNetTasks(2, 1, 1, root=str(tmp_path / "set"), image_size=12, cache_dir=None, split="val")
    assert "in memory only (no disk cache: data.cache_dir is null)" in caplog.text


def test_the_announced_size_is_the_decoded_size_for_archives_and_arrays(tmp_path, caplog):
    """Omniglot's zips, CIFAR's pickles and tieredImageNet's arrays count their images before decoding."""
    import logging

    from metaplus.data.cifar import CifarTasks
    from metaplus.data.tieredimagenet import TieredImageNetTasks
    from metaplus.testing.zoo import make_cifar100, make_tiered_pickled

    omniglot_module._PARTS_IN_MEMORY.clear()
    make_omniglot_zip(tmp_path / "omniglot", "images_background", alphabets=2, characters=3, drawers=3)
    make_omniglot_zip(tmp_path / "omniglot", "images_evaluation", alphabets=1, characters=3, drawers=3)
    make_cifar100(tmp_path / "cifar", train_per_class=2, test_per_class=1)
    make_tiered_pickled(tmp_path / "tiered", "val", classes=3, images=4, size=10, layout="npz")
    with caplog.at_level(logging.INFO, logger="metaplus"):
        OmniglotTasks(
            2,
            1,
            1,
            root=str(tmp_path / "omniglot"),
            class_split="background_evaluation",
            image_size=14,
            val_characters=2,
            cache_dir=str(tmp_path / "cache"),
            split="test",
        )
        cifar = CifarTasks(
            2,
            1,
            1,
            root=str(tmp_path / "cifar"),
            image_size=16,
            max_images_per_class=2,
            cache_dir=str(tmp_path / "cache"),
            split="val",
        )
        tiered = TieredImageNetTasks(
            2,
            1,
            1,
            root=str(tmp_path / "tiered"),
            image_size=8,
            max_images_per_class=3,
            cache_dir=str(tmp_path / "cache"),
            split="val",
        )
    announced = {
        tuple(Path(where).name.split("-")[:2]): (count, shape) for count, shape, where in decoding_lines(caplog)
    }
    parts = {
        part: omniglot_module._PARTS_IN_MEMORY[key] for key in omniglot_module._PARTS_IN_MEMORY for part in key[:1]
    }
    assert announced == {
        ("omniglot", "images_background"): (len(parts["images_background"].images), "1x14x14"),
        ("omniglot", "images_evaluation"): (len(parts["images_evaluation"].images), "1x14x14"),
        ("cifarfs", "val"): (len(cifar.data.images), "3x16x16"),
        ("tieredimagenet", "val"): (len(tiered.data.images), "3x8x8"),
    }
    assert (len(parts["images_background"].images), len(parts["images_evaluation"].images)) == (18, 9)
    assert len(cifar.data.images) == 16 * 2 and len(tiered.data.images) == 9
