"""Conv-4 backbone and its per-step batch norm: shapes, head sizing, clone/adapt compatibility."""

import learn2learn as l2l
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from metaplus.config import ConfigError
from metaplus.nn import Conv4, PerStepBatchNorm2d, configure_batchnorm
from metaplus.nn.init_from import split_init_from


@pytest.mark.parametrize("shape, pooled", [([1, 28, 28], 1), ([3, 84, 84], 5)])
def test_output_and_head_sizes_follow_the_input_shape(shape, pooled):
    model = Conv4(input_shape=shape, output_dim=5, filters=8)
    assert model.head.in_features == 8 * pooled * pooled
    out = model(torch.randn(6, *shape), step=2)
    assert out.shape == (6, 5)


def test_config_derives_shapes_from_the_data_node(make_config):
    cfg = make_config(["model=conv4", "data.input_shape=[3,84,84]", "data.output_dim=7", "model.filters=4"])
    model = instantiate(split_init_from(cfg.model)[0], _convert_="all")
    assert isinstance(model, Conv4) and model.head.out_features == 7 and model.head.in_features == 4 * 25
    assert model(torch.randn(2, 3, 84, 84)).shape == (2, 7)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(input_shape=[1, 8, 8]), "input_shape"),
        (dict(input_shape=[28, 28]), "input_shape"),
        (dict(activation="tanh"), "activation"),
        (dict(filters=0), "filters"),
    ],
)
def test_bad_settings_name_their_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Conv4(**kwargs)


def test_default_batch_norm_uses_batch_statistics_in_eval_too():
    model = Conv4(input_shape=[1, 28, 28], filters=4)
    assert not list(model.buffers())  # no running statistics are kept by default
    x = torch.randn(5, 1, 28, 28) * 3 + 1
    train_out = model.train()(x)
    torch.testing.assert_close(model.eval()(x), train_out)
    # the features entering the head really are batch-normalised: per-channel zero mean after BN
    norm = model.blocks[0].norm
    z = norm(model.blocks[0].conv(x))
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)


def test_leaky_relu_is_used_when_asked():
    x = torch.randn(4, 1, 28, 28)
    relu, leaky = Conv4(filters=4), Conv4(filters=4, activation="leaky_relu")
    leaky.load_state_dict(relu.state_dict())
    assert not torch.allclose(relu(x), leaky(x))


def test_clone_module_is_graph_connected_and_shares_running_stats():
    model = Conv4(input_shape=[1, 28, 28], output_dim=3, filters=4)
    configure_batchnorm(model, steps=2, per_step_stats=True)
    clone = l2l.clone_module(model)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 3, (6,))
    before = model.blocks[0].norm.running_mean.clone()
    loss = F.cross_entropy(clone(x, step=1), y)
    # buffers without grad are shared: the clone's forward updated the original's step-1 statistics only
    after = model.blocks[0].norm.running_mean
    assert torch.equal(after[0], before[0]) and not torch.equal(after[1], before[1])
    grads = torch.autograd.grad(loss, list(model.parameters()))
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads[:2])  # first conv gets gradient through the clone


def test_per_step_norm_module_types():
    model = Conv4(filters=4)
    assert sum(isinstance(m, PerStepBatchNorm2d) for m in model.modules()) == 4


def test_xavier_init_matches_the_mamlpp_reference():
    torch.manual_seed(0)
    model = Conv4(input_shape=[1, 28, 28], output_dim=5, filters=64, init="xavier")
    for layer in [b.conv for b in model.blocks] + [model.head]:
        weight = layer.weight
        fan_in = weight.shape[1] * weight[0, 0].numel()
        fan_out = weight.shape[0] * weight[0, 0].numel()
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert torch.count_nonzero(layer.bias) == 0
        assert weight.abs().max() <= bound
        # uniform on [-b, b] has std b / sqrt(3)
        assert weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
    default = Conv4(input_shape=[1, 28, 28], output_dim=5, filters=64)
    assert torch.count_nonzero(default.head.bias) > 0  # PyTorch's default init draws the biases
    with pytest.raises(ConfigError, match="init"):
        Conv4(init="he")
