"""Helpers for metaplus's tests (and tests of code built on it): the quick overrides, the shared dataset
folder, hand-derived models, independent recomputation of a test metric, W&B log decoding.

Needs the test extras (pytest). Submodules: :mod:`~metaplus.testing.probes` (callbacks a config injects,
``+callbacks.probe._target_=metaplus.testing.probes.FirstStepProbe``, also inside DDP's processes),
:mod:`~metaplus.testing.zoo` (tiny release-format copies of CIFAR-100, tieredImageNet, CUB, Omniglot's
archives, and folder-per-class image sets),
:mod:`~metaplus.testing.engines` (meta-batches and meta-gradients comparing the inner-loop engines).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import DictConfig
from torch import nn

# The checkout these helpers belong to (metaplus/testing/ is two levels down): where train.py runs.
REPO = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path | None:
    """$METAPLUS_DATA, else ../shared/data beside the repository, else None."""
    for candidate in (os.environ.get("METAPLUS_DATA"), REPO.parent / "shared" / "data"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


DATA = shared_data_dir()
OMNIGLOT = DATA / "omniglot" if DATA else None
needs_omniglot = pytest.mark.skipif(
    OMNIGLOT is None or not (OMNIGLOT / "images_background.zip").is_file(),
    reason="shared Omniglot absent (set $METAPLUS_DATA or provide ../shared/data/omniglot)",
)


#: What a test's own Trainer leaves out: no logger, checkpoints, progress bar or model summary, on one CPU
#: device; ``inference_mode=False`` because evaluation adapts (takes inner gradients) inside validate/test.
QUIET_TRAINER = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
    inference_mode=False,
)


def quiet_trainer(**overrides):
    """A Lightning Trainer for a test that drives a learner directly: ``QUIET_TRAINER``, ``overrides`` winning."""
    import lightning as L

    return L.Trainer(**{**QUIET_TRAINER, **overrides})


class TinyLinear(nn.Module):
    """f(x) = x w (no bias): the linear least-squares model of the hand-derived inner-loop tests."""

    def __init__(self, dim: int):
        super().__init__()
        self.head = nn.Linear(dim, 1, bias=False)

    def forward(self, x, step=0):
        return self.head(x)


def quadratic_terms(x, y):
    """(A, b) of L(w) = mean((x w - y)^2): grad L = A w - b with A = 2/n x^T x, b = 2/n x^T y."""
    n = x.shape[0]
    return 2.0 / n * x.T @ x, 2.0 / n * x.T @ y


# A run of seconds: one epoch of 3 meta-iterations, 8 validation and test episodes, nothing logged or drawn.
QUICK = [
    "logger=none",
    "trainer.log_every_n_steps=1",
    "trainer.max_epochs=1",
    "data.batches_per_epoch=3",
    "data.meta_batch_size=4",
    "data.val_episodes=8",
    "data.test_episodes=8",
    "trainer.enable_progress_bar=false",
    "~callbacks.progress_bar",
]

# QUICK on real Omniglot 5-way 1-shot with a 32-filter Conv-4: 30 meta-iterations of 4 tasks, 20 validation
# and 40 test episodes (about a minute of CPU), enough for a trained learner to beat its untrained self.
QUICK_OMNIGLOT = [
    *QUICK,
    "data=omniglot",
    "model=conv4",
    f"data.root={DATA / 'omniglot'}",
    "model.filters=32",
    "data.batches_per_epoch=30",
    "data.meta_batch_size=4",
    "data.val_episodes=20",
    "data.test_episodes=40",
]


def wandb_records(path: Path) -> list:
    """The records of an offline run's ``.wandb`` file, decoded with W&B's own protobuf schema
    (``wandb.proto.wandb_internal_pb2.Record``). The file is a LevelDB-style log, as W&B writes it: a
    7-byte header (":W&B", magic 0xBEE1, version), then 32 KiB blocks of chunks, each with a 7-byte
    header (CRC32, little-endian length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4). wandb >= 0.2x reads
    this file in its Go core (wandb-core) only, so no Python reader ships with the package."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, records, pending = Path(path).read_bytes(), 32768, [], b""
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos = 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is zero padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def recompute_test_metric(cfg: DictConfig, ckpt_path: str) -> tuple[float, float]:
    """The test metric of a checkpoint and its value before adaptation, recomputed independently of
    metaplus's evaluation code: the checkpoint's weights in a freshly built learner, the same fixed
    test episodes, adaptation by the learner's inner loop, then plain formulas (mean squared error,
    fraction of arg-max hits) averaged over the episodes. For learners whose evaluation is plain
    adaptation (MAML family, ANIL, Meta-SGD, Reptile), not MT-net's sampled masks or pre-training."""
    import lightning as L
    import torch

    from metaplus.data.episodes import EpisodeDataset
    from metaplus.run import build

    L.seed_everything(cfg.seed, verbose=False)
    parts = build(cfg)
    learner, datamodule = parts["learner"], parts["datamodule"]
    learner.load_state_dict(torch.load(ckpt_path, weights_only=False)["state_dict"])
    learner.eval()
    episodes = EpisodeDataset(datamodule.source("test"), datamodule.test_episodes, keys=(datamodule.eval_seed, "test"))

    def metric(prediction, y):
        if learner.task_type == "regression":
            return ((prediction.double() - y.double()) ** 2).mean().item()
        return (prediction.argmax(dim=1) == y).double().mean().item()

    after, before = [], []
    for i in range(len(episodes)):
        task = episodes[i][1]
        with torch.no_grad():
            before.append(metric(learner.backbone(task.query_x, step=0), task.query_y))
        adapted = learner.adapt(task, learner.test_inner_steps, first_order=True)
        with torch.no_grad():
            after.append(metric(adapted(task.query_x, step=max(learner.test_inner_steps - 1, 0)), task.query_y))
    return sum(after) / len(after), sum(before) / len(before)


def trained_vs_untrained(make_config, tmp_path, overrides: list[str], metric: str) -> tuple[dict, float]:
    """A short run's metrics and the same untrained learner's ``metric`` on the same fixed test episodes.

    The trained run's ``metric`` and its value before adaptation are first checked against
    ``recompute_test_metric`` (plain formulas on the checkpoint), so a margin asserted on them is a
    margin between independently computed numbers, not between two outputs of the code under test."""
    from metaplus.run import build, run

    cfg = make_config(overrides, output_dir=tmp_path / "trained")
    trained = run(cfg)
    after, before = recompute_test_metric(cfg, trained["best_checkpoint"])
    assert trained[metric] == pytest.approx(after, rel=1e-5, abs=1e-7), (metric, trained[metric], after)
    assert trained[f"{metric}_step0"] == pytest.approx(before, rel=1e-5, abs=1e-7), (metric, "step 0")
    parts = build(make_config(overrides, output_dir=tmp_path / "untrained"))
    return trained, parts["trainer"].test(parts["learner"], datamodule=parts["datamodule"], verbose=False)[0][metric]


def train_losses(run_dir: Path) -> dict[int, float]:
    """train/loss by global step from the CSV logger (logged every step)."""
    lines = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    step, loss = header.index("step"), header.index("train/loss")
    rows = [line.split(",") for line in lines[1:]]
    return {int(r[step]): float(r[loss]) for r in rows if r[loss]}
