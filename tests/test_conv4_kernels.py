"""Conv-4's kernel-level changes (issue 26) leave its results unchanged: max-pool before a monotone
activation (bitwise equal outputs and first/second-order gradients in the NCHW layout; in the
channels-last layout the second-order meta-gradients of the two orders agree to rounding only, about
1e-7 relative, not bit for bit), and the channels-last layout (equal to rounding)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from metaplus.algorithms import MAML
from metaplus.errors import ConfigError
from metaplus.nn import Conv4
from metaplus.nn import conv4 as conv4_module
from metaplus.testing import engines as engine_tests


def tied_conv4(activation: str, seed: int = 0) -> Conv4:
    """A Conv-4 whose pre-activations are full of exact ties and negatives: small-integer conv
    weights and biases (on small-integer inputs the sums are exact), BN weights of both signs."""
    torch.manual_seed(seed)
    model = Conv4(input_shape=[2, 16, 16], output_dim=3, filters=4, activation=activation, channels_last=False)
    with torch.no_grad():
        for block in model.blocks:
            block.conv.weight.copy_(torch.randint(-1, 2, block.conv.weight.shape).float())
            block.conv.bias.copy_(torch.randint(-1, 2, block.conv.bias.shape).float())
            block.norm.weight.copy_(torch.tensor([1.5, -0.5, 1.0, -2.0]))
            block.norm.bias.copy_(torch.tensor([0.0, 0.25, -0.5, 0.0]))
    return model


def tied_inputs(n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, 2, 16, 16), generator=g).float()  # many equal values in every window


def old_order(model: Conv4) -> Conv4:
    """The same weights, activation before the pool (the order before issue 26)."""
    model = copy.deepcopy(model)
    for block in model.blocks:
        block.pool_first = False
    return model


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_the_activation_runs_on_the_pooled_tensor(activation, monkeypatch):
    shapes = []
    original = conv4_module.ACTIVATIONS[activation]
    monkeypatch.setitem(conv4_module.ACTIVATIONS, activation, lambda x: shapes.append(x.shape[-1]) or original(x))
    Conv4(input_shape=[1, 28, 28], output_dim=5, filters=4, activation=activation)(torch.randn(2, 1, 28, 28))
    assert shapes == [14, 7, 3, 1]  # after each 2x2 pool, not the 28, 14, 7, 3 before it


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_pooling_first_gives_bitwise_equal_outputs_and_gradients_with_ties(activation):
    new = tied_conv4(activation)
    old = old_order(new)
    x = tied_inputs(6)
    pre = new.blocks[0].norm(new.blocks[0].conv(x))
    windows = pre.unfold(2, 2, 2).unfold(3, 2, 2).flatten(-2)
    assert (windows.max(-1).values == windows.sort(-1).values[..., -2]).any()  # some window's maximum is tied
    assert (pre < 0).any() and (pre > 0).any()
    outputs, grads = [], []
    for model in (new, old):
        xi = x.clone().requires_grad_()
        out = model(xi)
        out.square().sum().backward()
        outputs.append(out)
        grads.append([xi.grad] + [p.grad for p in model.parameters()])
    assert torch.equal(outputs[0], outputs[1])
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1], strict=True))


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
@pytest.mark.parametrize("inputs", ["random", "tied"])
def test_maml_meta_gradient_through_two_inner_steps_is_bitwise_equal(activation, inputs):
    """Second order: the double backward through both orders gives the same meta-gradient, bit for bit."""
    batch = engine_tests.image_batch(tasks=2, shape=(2, 16, 16), seed=3)
    support_x, query_x = batch.support_x.float(), batch.query_x.float()  # the training dtype
    if inputs == "tied":
        support_x = tied_inputs(support_x.flatten(0, 1).shape[0], seed=4).view_as(support_x)
        query_x = tied_inputs(query_x.flatten(0, 1).shape[0], seed=5).view_as(query_x)
    batch = dataclasses.replace(batch, support_x=support_x, query_x=query_x)
    backbone = (
        tied_conv4(activation)
        if inputs == "tied"
        else Conv4([2, 16, 16], 3, filters=4, activation=activation, channels_last=False)
    )
    meta_grads = []
    for model in (backbone, old_order(backbone)):
        learner = engine_tests.at_epoch(MAML(model, "classification", inner_steps=2, inner_lr=0.1, msl=True), 0)
        for b in range(len(batch)):
            learner.accumulate_task(batch[b], 1.0 / len(batch))
        meta_grads.append({n: p.grad for n, p in learner.named_parameters() if p.grad is not None})
    assert meta_grads[0].keys() == meta_grads[1].keys() and meta_grads[0]
    for name, grad in meta_grads[0].items():
        assert torch.equal(grad, meta_grads[1][name]), name


@pytest.mark.parametrize(
    "shape, expected",
    [([1, 28, 28], False), ([3, 31, 84], False), ([3, 32, 32], True), ([3, 56, 56], True), ([3, 84, 84], True)],
)
def test_channels_last_auto_turns_on_from_the_measured_image_side(shape, expected):
    assert conv4_module.CHANNELS_LAST_MIN_SIDE == 32
    assert Conv4(input_shape=shape, output_dim=5, filters=4).channels_last is expected
    assert Conv4(input_shape=shape, output_dim=5, filters=4, channels_last=not expected).channels_last is not expected


def test_channels_last_key_reaches_the_backbone_and_rejects_other_values(make_config):
    from metaplus.nn.init_from import build_backbone

    assert build_backbone(make_config(["data=miniimagenet", "model=conv4"]).model).channels_last is True
    assert build_backbone(make_config(["data=omniglot", "model=conv4"]).model).channels_last is False
    forced = make_config(["data=omniglot", "model=conv4", "model.channels_last=true"])
    assert build_backbone(forced.model).channels_last is True
    with pytest.raises(ConfigError, match="channels_last"):
        Conv4(input_shape=[3, 84, 84], channels_last="yes")


def test_channels_last_runs_the_convolutions_channels_last_and_keeps_the_meta_gradient():
    """Second-order MAML++ through 2 inner steps (learn2learn clones, fast weights from update_module):
    the convolutions see channels-last inputs in every step, and outputs and meta-gradients equal NCHW's."""
    batch = engine_tests.image_batch(tasks=2, shape=(3, 16, 16), seed=3)
    batch = dataclasses.replace(batch, support_x=batch.support_x.float(), query_x=batch.query_x.float())
    torch.manual_seed(0)
    backbone = Conv4([3, 16, 16], 3, filters=8, activation="leaky_relu", channels_last=False)
    layouts, results = [], []
    for channels_last in (False, True):
        model = copy.deepcopy(backbone)
        model.channels_last = channels_last
        for block in model.blocks:
            block.conv.register_forward_hook(
                lambda module, args, out, on=channels_last: layouts.append(
                    (on, args[0].is_contiguous(memory_format=torch.channels_last) and out.dim() == 4)
                )
            )
        learner = engine_tests.at_epoch(
            MAML(model, "classification", inner_steps=2, inner_lr=0.1, msl=True, lslr=True, bnwb=True), 0
        )
        for b in range(len(batch)):
            learner.accumulate_task(batch[b], 1.0 / len(batch))
        output = model(batch.query_x[0])
        results.append((output, {n: p.grad for n, p in learner.named_parameters() if p.grad is not None}))
    assert layouts and all(on == seen for on, seen in layouts)  # NCHW when off, channels-last in every conv when on
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    assert results[0][1].keys() == results[1][1].keys() and results[0][1]
    for name, grad in results[0][1].items():
        torch.testing.assert_close(results[1][1][name], grad, rtol=1e-4, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_channels_last_under_the_batched_engine_gives_the_default_engines_meta_gradient():
    """Under vmap a layout cannot be set (torch raises); the batched engine runs NCHW and agrees."""

    def make(engine):
        backbone = Conv4([1, 16, 16], 3, filters=4, activation="leaky_relu", channels_last=engine == "batched")
        return MAML(backbone, "classification", inner_steps=2, inner_lr=0.1, engine=engine, msl=True)

    batch = engine_tests.image_batch(tasks=2)
    batched = engine_tests.meta_gradients(make, batch, "batched")
    default = engine_tests.meta_gradients(make, batch, "l2l")
    assert batched.keys() == default.keys() and batched
    for name, grad in default.items():
        torch.testing.assert_close(batched[name], grad, msg=lambda m, n=name: f"{n}: {m}")
