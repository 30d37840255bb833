"""The top-k ensemble's batched path (issue 26): the k members adapted in one vmapped call over their
stacked parameters, the episode shared, against each member adapted on its own (``adapted_prediction``,
the sequential path). Members are perturbed copies of one learner: every parameter and buffer differs
(initialisation, LSLR / Meta-SGD rates, per-step BN weights and running statistics), so a member
evaluated with another member's rates or statistics, or one shared batch statistic, shows."""

from __future__ import annotations

import copy

import pytest
import torch

from metaplus.algorithms import ANIL, MAML, MetaSGD
from metaplus.algorithms.base import EpisodicLearner
from metaplus.data.episodes import Task
from metaplus.ensemble import MemberAdaptation, batched_predictions, stacked_state
from metaplus.nn import MLP, Conv4, ResNet12
from metaplus.testing.engines import conv4, image_batch, regression_batch

K = 3


def perturbed_members(learner, k: int = K, seed: int = 0) -> list:
    g = torch.Generator().manual_seed(seed)
    members = []
    for _ in range(k):
        member = copy.deepcopy(learner)
        with torch.no_grad():
            for tensor in [*member.parameters(), *member.buffers()]:
                if tensor.is_floating_point() and tensor.numel():
                    noise = torch.randn(tensor.shape, generator=g, dtype=torch.float64).to(tensor.dtype)
                    tensor.add_(0.05 * noise * tensor.abs().mean().clamp_min(0.1))
        members.append(member.eval())
    return members


def in_dtype(task: Task, dtype: torch.dtype) -> Task:
    cast = lambda t: t.to(dtype) if t.is_floating_point() else t
    return Task(cast(task.support_x), cast(task.support_y), cast(task.query_x), cast(task.query_y))


def mlp():
    return MLP(input_shape=[1], output_dim=1, hidden=[8, 8])


MAMLPP = dict(msl=True, lslr=True, bnrs=True, bnwb=True)
CASES = {
    # name: (learner factory, task, test steps)
    "maml_conv4_classification": (lambda: MAML(conv4(), "classification", inner_steps=2, inner_lr=0.1), "image", 2),
    "mamlpp_conv4_per_step_bn_lslr": (
        lambda: MAML(conv4(), "classification", inner_steps=2, inner_lr=0.1, **MAMLPP),
        "image",
        3,  # more test steps than trained ones: the last rate and BN set are reused
    ),
    "mamlpp_conv4_running_bn_stats": (
        lambda: MAML(conv4(), "classification", inner_steps=2, inner_lr=0.1, bn_stats="running", **MAMLPP),
        "image",
        2,
    ),
    "maml_adapt_bn_affine": (
        lambda: MAML(conv4(), "classification", inner_steps=2, inner_lr=0.1, adapt_bn_affine=True),
        "image",
        2,
    ),
    "anil_conv4": (lambda: ANIL(conv4(), "classification", inner_steps=2, inner_lr=0.1), "image", 2),
    "maml_mlp_regression": (lambda: MAML(mlp(), "regression", inner_steps=2, inner_lr=0.05), "regression", 2),
    "mamlpp_mlp_regression_lslr": (
        lambda: MAML(mlp(), "regression", inner_steps=2, inner_lr=0.05, lslr=True, msl=True),
        "regression",
        2,
    ),
    "metasgd_mlp_regression": (lambda: MetaSGD(mlp(), "regression", inner_steps=2, inner_lr=0.05), "regression", 2),
    # ResNet-12 with DropBlock: members are in evaluation mode, where DropBlock draws nothing
    "mamlpp_resnet12_dropblock": (
        lambda: MAML(
            ResNet12(input_shape=[3, 16, 16], output_dim=3, widths=[2, 3, 4, 5], dropblock_rate=0.1),
            "classification",
            inner_steps=2,
            inner_lr=0.1,
            **MAMLPP,
        ),
        "rgb",
        2,
    ),
    # channels-last Conv-4 (model.channels_last, on from 32x32 up): the shared episode is a plain tensor
    # inside vmap, so the layout must be left alone there (torch raises when asked to set it)
    "maml_conv4_channels_last": (
        lambda: MAML(
            Conv4([3, 32, 32], 3, filters=4, activation="leaky_relu", channels_last=True),
            "classification",
            inner_steps=2,
            inner_lr=0.1,
        ),
        "rgb32",
        2,
    ),
    "zero_steps": (lambda: MAML(conv4(), "classification", inner_steps=2, inner_lr=0.1, **MAMLPP), "image", 0),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_batched_member_predictions_equal_each_member_adapted_alone(case, dtype):
    make, kind, steps = CASES[case]
    torch.manual_seed(0)
    members = perturbed_members(make().to(dtype))
    batch = {
        "image": image_batch,
        "rgb": lambda: image_batch(shape=(3, 16, 16)),
        "rgb32": lambda: image_batch(shape=(3, 32, 32)),
        "regression": regression_batch,
    }
    task = in_dtype(batch[kind]()[0], dtype)
    expected = [m.adapted_prediction(task, steps) for m in members]
    for a in range(K):  # the members really differ, so mixing them up cannot pass
        for b in range(a):
            assert not torch.allclose(expected[a], expected[b], rtol=1e-3, atol=1e-3)
    got = batched_predictions(MemberAdaptation(members[0], steps), stacked_state(members), task)
    assert got.shape == (K, *expected[0].shape) and got.dtype == dtype
    # 1e-5, except float32 ResNet-12: its batch norms over 2-5 channels of 6 images amplify float32
    # rounding (max abs difference 1.8e-5 on logits of ~4; float64 agrees to 1e-13)
    tolerance = 1e-4 if dtype == torch.float32 and "resnet12" in case else 1e-5
    for j in range(K):
        torch.testing.assert_close(got[j], expected[j], rtol=tolerance, atol=tolerance, msg=f"member {j}")


def test_each_member_uses_its_own_batch_statistics():
    """Per-step BN normalises with batch statistics: each member's own (its own convolution outputs),
    not statistics pooled over the members, as when the members adapt one after another."""
    members = perturbed_members(MAML(conv4(), "classification", inner_steps=1, inner_lr=0.1, **MAMLPP).double())
    with torch.no_grad():  # very different first-layer scales: pooled statistics would be far off
        for j, member in enumerate(members):
            member.backbone.blocks[0].conv.weight.mul_(10.0**j)
    task = image_batch()[0]
    got = batched_predictions(MemberAdaptation(members[0], 1), stacked_state(members), task)
    for j, member in enumerate(members):
        torch.testing.assert_close(got[j], member.adapted_prediction(task, 1), rtol=1e-5, atol=1e-5)


def test_the_batched_path_refuses_learners_it_cannot_batch(make_config, tmp_path):
    """Reptile's Adam inner rule keeps state across steps: batched=True says so by name instead of
    silently adapting the members one after another."""
    from metaplus.ensemble import evaluate_ensemble
    from metaplus.run import build
    from metaplus.testing import QUICK

    parts = build(make_config([*QUICK, "algo=reptile"], tmp_path / "run"))
    with pytest.raises(ValueError, match="batched=True.*Reptile"):
        evaluate_ensemble(parts["learner"], parts["datamodule"], [(tmp_path / "x.ckpt", 0.0)], batched=True)


def test_the_batched_path_never_adapts_a_member_alone(monkeypatch):
    """The batched figures above are not the sequential path's by a silent fallback."""
    members = perturbed_members(MAML(conv4(), "classification", inner_steps=2, inner_lr=0.1, **MAMLPP).double())
    task = image_batch()[0]
    expected = [m.adapted_prediction(task, 2) for m in members]

    def refuse(*args, **kwargs):
        raise AssertionError("a member was adapted alone")

    monkeypatch.setattr(EpisodicLearner, "adapted_prediction", refuse)
    monkeypatch.setattr(EpisodicLearner, "adapt", refuse)
    got = batched_predictions(MemberAdaptation(members[0], 2), stacked_state(members), task)
    torch.testing.assert_close(got, torch.stack(expected), rtol=1e-5, atol=1e-5)
