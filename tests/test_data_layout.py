"""The data layer's shared pieces (issue 27, "one home per concept"): the checks every image source
starts with, one field list for Task and TaskBatch, torchvision's image suffixes."""

from __future__ import annotations

import importlib
from dataclasses import fields

import pytest
import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from metaplus.config import ConfigError
from metaplus.data.episodes import Task, TaskBatch, collate_tasks
from metaplus.data.image_source import ImageSource
from metaplus.data.imagefolder import ImageFolderTasks
from metaplus.data.listing import folder_classes

SOURCES = {
    "cub": "CUBTasks",
    "tieredimagenet": "TieredImageNetTasks",
    "cifar": "CifarTasks",
    "miniimagenet": "MiniImageNetTasks",
    "omniglot": "OmniglotTasks",
    "imagefolder": "ImageFolderTasks",
}


def source_class(module: str) -> type:
    return getattr(importlib.import_module(f"metaplus.data.{module}"), SOURCES[module])


@pytest.mark.parametrize("module", SOURCES)
def test_every_image_source_checks_its_arguments_before_reading_anything(module, tmp_path):
    cls = source_class(module)
    assert issubclass(cls, ImageSource)
    args = dict(ways=2, shots=1, queries=1, root=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"split: 'training' is invalid: must be one of \['test', 'train', 'val'\]"):
        cls(**args, split="training")
    with pytest.raises(ConfigError, match="source.class_split"):
        cls(**args, class_split="nonsense")
    with pytest.raises(ConfigError, match="source.image_size"):
        cls(**args, image_size=0)
    with pytest.raises(ConfigError, match=r"source.root.*\(data.root\)"):
        cls(**{**args, "root": None})


def test_image_folder_checks_its_subset_limits_like_the_other_sources(tmp_path):
    # It used to take max_classes=0 silently and fail later with "holds no <class>/<image> files".
    (tmp_path / "a").mkdir()
    for key in ("max_classes", "max_images_per_class"):
        with pytest.raises(ConfigError, match=f"source.{key}.*null or an integer >= 1"):
            ImageFolderTasks(2, 1, 1, root=str(tmp_path), **{key: 0})


def test_image_files_are_torchvision_s_extensions_and_gif_in_any_case_hidden_entries_skipped(tmp_path):
    suffixes = [*IMG_EXTENSIONS, ".gif"]
    for i, suffix in enumerate(suffixes):
        (tmp_path / "cls" / f"img{i}{suffix.upper() if i % 2 else suffix}").parent.mkdir(exist_ok=True)
        (tmp_path / "cls" / f"img{i}{suffix.upper() if i % 2 else suffix}").write_bytes(b"")
    for name in (".hidden.png", "notes.txt", "img.png.bak"):
        (tmp_path / "cls" / name).write_bytes(b"")
    (tmp_path / ".refused" / "x").mkdir(parents=True)  # quarantined archives are no class
    (tmp_path / ".refused" / "y.png").write_bytes(b"")
    [(name, files)] = folder_classes(tmp_path)
    assert name == "cls" and len(files) == len(suffixes)


def test_task_and_task_batch_share_one_field_list_and_round_trip():
    assert [f.name for f in fields(TaskBatch)] == [f.name for f in fields(Task)] + ["index"]
    g = torch.Generator().manual_seed(0)
    for with_classes in (True, False):
        tasks = [
            Task(
                torch.rand(3, 2, generator=g),
                torch.arange(3),
                torch.rand(4, 2, generator=g),
                torch.arange(4),
                support_classes=torch.arange(3) + 10 if with_classes else None,
                query_classes=torch.arange(4) + 10 if with_classes else None,
            )
            for _ in range(4)
        ]
        batch = collate_tasks(list(enumerate(tasks, 7)))
        assert batch.index.tolist() == [7, 8, 9, 10] and len(batch) == 4
        assert (batch.support_classes is None) == (not with_classes)
        for b, task in enumerate(tasks):
            for f in fields(Task):
                got, want = getattr(batch[b], f.name), getattr(task, f.name)
                assert (got is None and want is None) or torch.equal(got, want)
        half = batch.split(2, 1)
        assert half.index.tolist() == [9, 10] and torch.equal(half.query_x, batch.query_x[2:])
        assert (half.query_classes is None) == (not with_classes)
