"""The data path (issue 24): image episodes travel as uint8 and are normalised on the device, with the
same numbers as the float path; loader workers draw each epoch's own tasks."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch
from lightning.pytorch.trainer.states import TrainerStatus
from PIL import Image

from metaplus.compose import compose_config
from metaplus.config import instantiate_group
from metaplus.data.datamodule import EpisodicDataModule
from metaplus.data.episodes import TaskBatch
from metaplus.testing import QUICK

FIELDS = ("support_x", "support_y", "query_x", "query_y", "index", "support_classes", "query_classes")


def noise_folders(root, classes: int = 4, per_class: int = 3) -> None:
    """``root/{train,val,test}/<class>/<image>.png``: RGB noise, 14x11 pixels."""
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 256, (11, 14, 3), dtype=np.uint8)).save(
                    root / split / f"c{c}" / f"{i}.png"
                )


def image_overrides(root, cache) -> list[str]:
    return [
        *QUICK,
        "data=imagefolder",
        f"data.root={root}",
        f"data.cache_dir={cache}",
        "data.image_size=16",
        "data.ways=2",
        "data.shots=1",
        "data.queries=2",
        "data.meta_batch_size=2",
        "data.batches_per_epoch=2",
        "data.val_episodes=2",
        "data.test_episodes=2",
        "model.filters=4",
        "algo.test_inner_steps=1",
        "data.source.mean=[0.4,0.5,0.6]",
        "data.source.std=[0.2,0.3,0.25]",
    ]


def running_trainer(epoch: int = 0, training: bool = True, testing: bool = False) -> SimpleNamespace:
    """What the datamodule reads of a trainer in the middle of ``fit``/``test``."""
    return SimpleNamespace(
        current_epoch=epoch,
        world_size=1,
        training=training,
        testing=testing,
        state=SimpleNamespace(status=TrainerStatus.RUNNING),
    )


def same_batches(a: TaskBatch, b: TaskBatch) -> bool:
    return all(
        (getattr(a, f) is None and getattr(b, f) is None) or torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS
    )


def test_image_batches_travel_as_uint8_and_are_normalised_to_the_float_path(tmp_path):
    noise_folders(tmp_path / "set")
    cfg = compose_config(image_overrides(tmp_path / "set", tmp_path / "cache"), tmp_path / "run")
    in_process = instantiate_group(cfg.data, "data")  # no trainer: loaders yield the model's inputs
    attached = instantiate_group(cfg.data, "data")
    for stage, loader in (("train", "train_dataloader"), ("val", "val_dataloader"), ("test", "test_dataloader")):
        expected = next(iter(getattr(in_process, loader)()))
        attached.trainer = running_trainer(training=stage == "train", testing=stage == "test")
        moved = next(iter(getattr(attached, loader)()))
        assert moved.support_x.dtype == torch.uint8 and moved.query_x.dtype == torch.uint8, stage
        assert expected.support_x.dtype == torch.float32
        assert moved.support_x.numel() * 4 == expected.support_x.numel() * expected.support_x.element_size()
        normalised = attached.on_after_batch_transfer(moved, 0)
        assert same_batches(normalised, expected), f"{stage}: the device-side normalisation differs from the CPU's"
    # regression batches (no pixels) pass the hook untouched
    sinusoid = instantiate_group(compose_config(QUICK, tmp_path / "run2").data, "data")
    batch = next(iter(sinusoid.val_dataloader()))
    assert sinusoid.on_after_batch_transfer(batch, 0) is batch


def test_a_run_on_uint8_batches_equals_the_float_path(tmp_path, monkeypatch):
    """Through Lightning (transfer, hook, training, validation, test): the same metrics and weights."""
    from metaplus.run import run

    noise_folders(tmp_path / "set")
    seen = []
    normalise = EpisodicDataModule.normalise
    monkeypatch.setattr(
        EpisodicDataModule,
        "normalise",
        lambda self, batch, split: seen.append((split, batch.support_x.dtype)) or normalise(self, batch, split),
    )
    runs = {}
    for path in ("uint8", "float"):
        if path == "float":  # as before: the loaders hand Lightning normalised floats
            monkeypatch.setattr(EpisodicDataModule, "sends_pixels", lambda self: False)
        seen.clear()
        metrics = run(compose_config(image_overrides(tmp_path / "set", tmp_path / "cache"), tmp_path / path))
        runs[path] = (
            metrics,
            torch.load(tmp_path / path / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"],
        )
        if path == "uint8":
            assert {("train", torch.uint8), ("val", torch.uint8), ("test", torch.uint8)} <= set(seen)
        else:
            assert all(dtype == torch.float32 for _, dtype in seen)
    (uint8_metrics, uint8_state), (float_metrics, float_state) = runs["uint8"], runs["float"]
    for key in ("test/acc", "test/loss", "val/acc", "val/loss", "test/acc_step0"):
        assert uint8_metrics[key] == float_metrics[key], key
    assert all(torch.equal(uint8_state[k], float_state[k]) for k in float_state)


def draw_epochs(datamodule: EpisodicDataModule, epochs: int) -> list[list[torch.Tensor]]:
    datamodule.trainer = running_trainer()
    loader = datamodule.train_dataloader()  # one loader for the whole fit, as Lightning keeps it
    drawn = []
    for epoch in range(epochs):
        datamodule.trainer.current_epoch = epoch
        drawn.append([batch.support_x for batch in loader])
    return drawn


def test_loader_workers_draw_each_epoch_s_own_tasks(tmp_path):
    cfg = compose_config([*QUICK, "data.num_workers=2"], tmp_path / "run")
    with_workers = instantiate_group(cfg.data, "data")
    assert with_workers.train_dataloader().persistent_workers, "workers are kept across epochs"
    in_workers = draw_epochs(with_workers, 2)
    cfg = compose_config([*QUICK, "data.num_workers=0"], tmp_path / "run")
    in_process = draw_epochs(instantiate_group(cfg.data, "data"), 2)
    for epoch in range(2):
        assert len(in_workers[epoch]) == 3
        assert all(torch.equal(a, b) for a, b in zip(in_workers[epoch], in_process[epoch])), f"epoch {epoch}"
    assert not any(torch.equal(a, b) for a, b in zip(in_workers[0], in_workers[1])), "epoch 1 repeated epoch 0"


def test_ranks_get_every_world_size_th_index_of_the_epoch():
    """Under DDP Lightning wraps the epoch sampler (shuffle=False): rank r draws indices r, r + world, ...
    of the current epoch, as the plain distributed sampler handed them out before."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper  # what Lightning puts around it

    from metaplus.data.episodes import EpochSampler

    epoch = {"now": 3}
    sampler = EpochSampler(8, lambda: epoch["now"])
    ranks = [list(DistributedSamplerWrapper(sampler, num_replicas=2, rank=r, shuffle=False)) for r in range(2)]
    assert ranks == [[(3, 0), (3, 2), (3, 4), (3, 6)], [(3, 1), (3, 3), (3, 5), (3, 7)]]
    epoch["now"] = 4
    assert list(DistributedSamplerWrapper(sampler, num_replicas=2, rank=0, shuffle=False))[0] == (4, 0)
