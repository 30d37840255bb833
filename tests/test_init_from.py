"""model.init_from: a learner's backbone starts from another run's checkpoint (pre-train, then MAML)."""

import logging

import pytest
import torch

from metaplus.compose import compose_config
from metaplus.config import ConfigError
from metaplus.nn import ResNet12
from metaplus.nn.init_from import init_backbone_from
from metaplus.run import build, run
from metaplus.testing import QUICK

SINE = [
    *QUICK,
    "data=sinusoid",
    "data.batches_per_epoch=2",
    "data.meta_batch_size=2",
    "data.val_episodes=2",
    "data.test_episodes=2",
    "model=mlp",
    "model.hidden=[8,8]",
]


def test_pretrain_then_maml_starts_from_the_pretrained_backbone(tmp_path):
    pretrain = run(compose_config([*SINE, "algo=pretrain", "algo.test_inner_steps=1"], tmp_path / "pretrain"))
    ckpt = pretrain["best_checkpoint"]
    assert ckpt and ckpt.endswith(".ckpt")
    saved = {
        k.removeprefix("backbone."): v
        for k, v in torch.load(ckpt, weights_only=True)["state_dict"].items()
        if k.startswith("backbone.")
    }
    fresh = build(compose_config([*SINE, "algo=maml"], tmp_path / "fresh"))["learner"].backbone
    learner = build(compose_config([*SINE, "algo=maml", f"model.init_from={ckpt}"], tmp_path / "maml"))["learner"]
    state = learner.backbone.state_dict()
    assert set(state) == set(saved)
    for name, tensor in state.items():
        torch.testing.assert_close(tensor, saved[name], rtol=0, atol=0)
    assert not torch.equal(fresh.state_dict()["head.weight"], saved["head.weight"]), "the load really changed it"
    # and the run trains on from there
    metrics = run(compose_config([*SINE, "algo=maml", f"model.init_from={ckpt}"], tmp_path / "maml_run"))
    assert metrics["test/episodes"] == 2


def small_resnet(output_dim=5, widths=(2, 3, 4, 5), seed=0):
    torch.manual_seed(seed)
    return ResNet12(input_shape=[3, 16, 16], output_dim=output_dim, widths=list(widths))


def test_a_different_head_stays_fresh_and_is_logged(tmp_path, caplog):
    source = small_resnet(output_dim=20, seed=1)
    path = tmp_path / "source.ckpt"
    torch.save(
        {
            "state_dict": {f"backbone.{k}": v for k, v in source.state_dict().items()},
            "pretrain_head.weight": torch.zeros(3),
        },
        path,
    )
    target = small_resnet(output_dim=5, seed=2)
    fresh_head = target.head.weight.detach().clone()
    with caplog.at_level(logging.INFO, logger="metaplus"):
        report = init_backbone_from(target, path)
    assert report["head_kept"]
    torch.testing.assert_close(target.head.weight, fresh_head, rtol=0, atol=0)
    for name, tensor in source.state_dict().items():
        if not name.startswith("head."):
            torch.testing.assert_close(target.state_dict()[name], tensor, rtol=0, atol=0)
    head_lines = [r.getMessage() for r in caplog.records if "keeping the freshly initialised head" in r.getMessage()]
    assert len(head_lines) == 1 and "head.weight (5, 5) vs (20, 5)" in head_lines[0]


def test_a_different_body_is_an_error_naming_tensors_and_shapes(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(small_resnet(widths=(2, 3, 4, 6)).state_dict(), path)  # a plain state_dict works too
    with pytest.raises(
        ConfigError,
        match=r"model\.init_from.*blocks\.3\.conv1\.weight: backbone \(5, 4, 3, 3\), "
        r"checkpoint \(6, 4, 3, 3\)",
    ):
        init_backbone_from(small_resnet(), path)


def test_missing_tensors_and_missing_files_are_errors(tmp_path):
    path = tmp_path / "partial.pt"
    state = small_resnet().state_dict()
    del state["blocks.0.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(ConfigError, match=r"blocks\.0\.conv1\.weight: backbone \(2, 3, 3, 3\), checkpoint missing"):
        init_backbone_from(small_resnet(), path)
    with pytest.raises(ConfigError, match=r"model\.init_from.*existing checkpoint file"):
        init_backbone_from(small_resnet(), tmp_path / "nowhere.ckpt")
    cfg = compose_config([*SINE, "algo=maml", f"model.init_from={tmp_path / 'nowhere.ckpt'}"], tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model\.init_from"):
        build(cfg)
