"""ResNet-12: shapes, config, the MAML meta-gradient against independent computations (second order,
per-step BN), ANIL's head, MT-nets' T layers, DropBlock, and training from the config.

Models are tiny (widths of 2-5 channels, 16x16 images, float64) so the gradient checks run in seconds.
"""

import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from torch.func import functional_call

from metaplus.algorithms import ANIL, MAML, MTNet
from metaplus.compose import compose_config
from metaplus.config import ConfigError
from metaplus.data.episodes import Task
from metaplus.nn import PerStepBatchNorm2d, ResNet12, head_parameter_names
from metaplus.nn.init_from import split_init_from
from metaplus.nn.resnet12 import drop_block
from metaplus.nn.transform import transform_parameter_names, transformed_layers
from metaplus.testing import QUICK

TINY = dict(input_shape=[3, 16, 16], output_dim=3, widths=[2, 3, 4, 5])


def tiny_resnet(seed=0, **kwargs) -> ResNet12:
    torch.manual_seed(seed)
    return ResNet12(**{**TINY, **kwargs}).double()


def image_task(ways=3, shots=2, queries=2, seed=0) -> Task:
    g = torch.Generator().manual_seed(seed)
    support_y, query_y = torch.arange(ways).repeat_interleave(shots), torch.arange(ways).repeat_interleave(queries)
    x = lambda n: torch.randn(n, 3, 16, 16, generator=g, dtype=torch.float64)
    return Task(x(len(support_y)), support_y, x(len(query_y)), query_y)


# -- architecture ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape, pool, features",
    [
        ([3, 84, 84], "avg", 640),
        ([3, 84, 84], "flatten", 640 * 25),
        ([3, 32, 32], "flatten", 640 * 4),
        ([1, 28, 28], "avg", 640),
    ],
)
def test_head_size_follows_pool_and_input_shape(shape, pool, features):
    model = ResNet12(input_shape=shape, output_dim=7, pool=pool)
    assert model.head.in_features == features and model.head.out_features == 7
    # 4 blocks x (3 convs + shortcut) + head; biases only in the head (batch norm follows every conv)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 16 and all(c.bias is None for c in convs)
    assert [b.conv1.out_channels for b in model.blocks] == [64, 160, 320, 640]
    assert sum(isinstance(m, PerStepBatchNorm2d) for m in model.modules()) == 16


def test_parameter_count_is_the_literatures_resnet12():
    # MetaOptNet's ResNet-12 (64-160-320-640): 12.42 M parameters in the body. Counted by hand:
    # per block 9*i*o + 9*o*o*2 + i*o (convs) + 4 * 2*o (four BNs).
    ins, outs = [3, 64, 160, 320], [64, 160, 320, 640]
    body = sum(9 * i * o + 18 * o * o + i * o + 8 * o for i, o in zip(ins, outs))
    model = ResNet12(input_shape=[3, 84, 84], output_dim=5)
    assert sum(p.numel() for p in model.parameters()) == body + 640 * 5 + 5


def test_forward_by_hand_for_one_block():
    model = tiny_resnet(widths=[4], input_shape=[3, 8, 8])
    x = torch.randn(5, 3, 8, 8, dtype=torch.float64)
    b = model.blocks[0]
    bn = lambda z: F.batch_norm(z, None, None, training=True)  # affine is identity at initialisation
    out = F.leaky_relu(bn(F.conv2d(x, b.conv1.weight, padding=1)), 0.1)
    out = F.leaky_relu(bn(F.conv2d(out, b.conv2.weight, padding=1)), 0.1)
    out = bn(F.conv2d(out, b.conv3.weight, padding=1)) + bn(F.conv2d(x, b.shortcut.weight))
    out = F.max_pool2d(F.leaky_relu(out, 0.1), 2).mean(dim=(2, 3))
    torch.testing.assert_close(model(x), F.linear(out, model.head.weight, model.head.bias))


def test_config_derives_shapes_from_the_data_node(make_config):
    cfg = make_config(["model=resnet12", "data.input_shape=[3,32,32]", "data.output_dim=4", "model.widths=[2,3,4,5]"])
    model = instantiate(split_init_from(cfg.model)[0], _convert_="all")
    assert isinstance(model, ResNet12) and model.head.in_features == 5 and model.head.out_features == 4
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        (dict(input_shape=[3, 8, 8]), "input_shape"),
        (dict(widths=[]), "widths"),
        (dict(widths=[4, 0]), "widths"),
        (dict(pool="max"), "pool"),
        (dict(dropblock_rate=1.0), "dropblock_rate"),
        (dict(dropblock_size=0), "dropblock_size"),
    ],
)
def test_bad_settings_name_their_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        ResNet12(**kwargs)


# -- the MAML meta-gradient -----------------------------------------------------------------------
def functional_meta_gradient(model, task, alpha, steps, adapted, second_order=True):
    """d L_Q(theta_S) / d theta by autograd through torch.func.functional_call: an inner loop written
    independently of learn2learn's clone/update and of metaplus's engine."""
    theta = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    fast = dict(theta)
    for k in range(steps):
        loss = F.cross_entropy(functional_call(model, fast, (task.support_x,), {"step": k}), task.support_y)
        names = [n for n in fast if n in adapted]
        grads = torch.autograd.grad(loss, [fast[n] for n in names], create_graph=second_order)
        fast = {**fast, **{n: fast[n] - alpha * g for n, g in zip(names, grads)}}
    query = F.cross_entropy(functional_call(model, fast, (task.query_x,), {"step": max(steps - 1, 0)}), task.query_y)
    return dict(zip(theta, torch.autograd.grad(query, list(theta.values()))))


def learner_gradient(learner, task):
    loss = learner.task_loss(task)[0]
    named = list(learner.backbone.named_parameters())
    return dict(zip([n for n, _ in named], torch.autograd.grad(loss, [p for _, p in named])))


@pytest.mark.parametrize("bnwb,adapt_bn_affine", [(False, False), (False, True), (True, False)])
def test_second_order_maml_gradient_matches_an_independent_computation(bnwb, adapt_bn_affine):
    steps, alpha = 2, 0.3
    learner = MAML(
        tiny_resnet(),
        "classification",
        inner_steps=steps,
        inner_lr=alpha,
        bnwb=bnwb,
        bnrs=bnwb,
        adapt_bn_affine=adapt_bn_affine,
    ).double()
    norm = learner.backbone.blocks[1].norm2
    assert norm.weight.shape == ((steps, 3) if bnwb else (3,))
    if bnwb:  # distinct per-step affine sets, so using the wrong step's set would show
        with torch.no_grad():
            for m in learner.backbone.modules():
                if isinstance(m, PerStepBatchNorm2d):
                    m.weight.copy_(torch.rand_like(m.weight) + 0.5)
                    m.bias.copy_(torch.randn_like(m.bias) * 0.1)
    task = image_task()
    got = learner_gradient(learner, task)
    adapted = learner.adapted_names()
    # 12 convs + 3 shortcut convs + head weight/bias; BN's weight/bias are meta-learned only unless
    # adapt_bn_affine (as in Finn's and the MAML++ code)
    convs_and_head = {n for n in got if "norm" not in n}
    assert len(convs_and_head) == 16 + 2
    assert adapted == (set(got) if adapt_bn_affine else convs_and_head)
    expected = functional_meta_gradient(learner.backbone, task, alpha, steps, adapted)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-7, atol=1e-10, msg=name)
    first = functional_meta_gradient(learner.backbone, task, alpha, steps, adapted, second_order=False)
    assert not torch.allclose(first["blocks.0.conv1.weight"], expected["blocks.0.conv1.weight"], atol=1e-8), (
        "this problem separates first from second order"
    )


def test_second_order_meta_gradient_matches_finite_differences():
    """The directional derivative of the post-adaptation query loss, by central differences.

    Leaky ReLU and max-pool make the loss piecewise smooth with kinks close by (a tiny network, a
    large inner step), so the step must stay inside one piece: 1e-7 does in float64 (1e-5 does not)."""
    steps, alpha, eps = 2, 0.2, 1e-7
    learner = MAML(tiny_resnet(seed=1), "classification", inner_steps=steps, inner_lr=alpha)
    task = image_task(seed=3)
    grads = learner_gradient(learner, task)
    params = dict(learner.backbone.named_parameters())
    g = torch.Generator().manual_seed(5)
    direction = {n: torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in params.items()}
    analytic = sum((grads[n] * direction[n]).sum() for n in params)

    def loss_at(sign):
        with torch.no_grad():
            for n, p in params.items():
                p.add_(sign * eps * direction[n])
        value = learner.task_loss(task)[0].item()
        with torch.no_grad():
            for n, p in params.items():
                p.sub_(sign * eps * direction[n])
        return value

    numeric = (loss_at(1) - loss_at(-1)) / (2 * eps)
    assert numeric == pytest.approx(analytic.item(), rel=1e-6)
    first = MAML(learner.backbone, "classification", inner_steps=steps, inner_lr=alpha, first_order=True)
    first_dir = sum((v * direction[n]).sum() for n, v in learner_gradient(first, task).items())
    assert abs(first_dir.item() - numeric) > 1e-3 * abs(numeric), "first order differs from the true derivative"


def test_every_batch_norm_receives_the_inner_step():
    learner = MAML(tiny_resnet(), "classification", inner_steps=3, inner_lr=0.1, bnwb=True)
    seen = {}
    handles = [
        m.register_forward_pre_hook(
            lambda mod, args, kwargs, name=name: seen.setdefault(name, []).append(kwargs["step"]), with_kwargs=True
        )
        for name, m in learner.backbone.named_modules()
        if isinstance(m, PerStepBatchNorm2d)
    ]
    learner.task_loss(image_task())
    for h in handles:
        h.remove()
    assert len(seen) == 16 and all(steps == [0, 1, 2, 2] for steps in seen.values())  # 3 support + query


def test_per_step_running_statistics_are_kept_per_step():
    learner = MAML(tiny_resnet(), "classification", inner_steps=2, inner_lr=0.1, bnrs=True, bn_stats="running").double()
    norm = learner.backbone.blocks[3].shortcut_norm
    assert norm.running_mean.shape == (2, 5)
    learner.train()
    learner.task_loss(image_task())
    assert not torch.allclose(norm.running_mean[0], norm.running_mean[1])


def test_lslr_learns_a_rate_per_tensor_and_step():
    learner = MAML(tiny_resnet(), "classification", inner_steps=2, inner_lr=0.1, lslr=True).double()
    # one rate per adapted tensor: every conv, shortcut and the head; batch-norm affines are not adapted
    assert set(learner.lr_names) == {n for n, _ in learner.backbone.named_parameters() if "norm" not in n}
    rates = learner.inner_lrs[learner.lr_names["blocks.2.shortcut.weight"]]
    assert rates.shape == (2,) and torch.allclose(rates, torch.full((2,), 0.1, dtype=rates.dtype))
    grad = torch.autograd.grad(learner.task_loss(image_task())[0], rates)[0]
    assert bool((grad != 0).all()), "both steps' rates of the shortcut conv get an outer gradient"


# -- ANIL and MT-nets --------------------------------------------------------------------------------
def test_anil_finds_the_head_and_adapts_only_it():
    model = tiny_resnet()
    assert head_parameter_names(model) == {"head.weight", "head.bias"}
    learner = ANIL(model, "classification", inner_steps=1, inner_lr=0.5)
    task = image_task()
    adapted = learner.adapt(task, 1, first_order=False)
    assert torch.equal(adapted.blocks[2].conv2.weight, model.blocks[2].conv2.weight)
    assert not torch.allclose(adapted.head.weight, model.head.weight)
    # the body's meta-gradient flows through the head's inner update (second order)
    grads = learner_gradient(learner, task)
    assert grads["blocks.0.conv1.weight"].abs().sum() > 0


def test_mtnet_wraps_every_conv_and_the_head_and_learns_t_and_masks():
    model = tiny_resnet()
    learner = MTNet(model, "classification", inner_steps=1, inner_lr=0.1)
    layers = transformed_layers(model)
    assert len(layers) == 17 and "blocks.0.shortcut" in layers and "head" in layers
    assert not learner.adapted_names() & transform_parameter_names(model)
    assert "blocks.3.conv3.layer.weight" in learner.adapted_names()
    assert learner.mask_logits["blocks__3__conv3"].shape == (5,)  # one entry per output channel (share_M)
    task = image_task()
    # T starts as the identity: the wrapped network computes what the plain one did
    torch.testing.assert_close(model(task.query_x), tiny_resnet()(task.query_x))
    loss = learner.task_loss(task)[0]
    t_weight = layers["blocks.1.conv2"].transform.weight
    t_grad, logit_grad = torch.autograd.grad(loss, [t_weight, learner.mask_logits["blocks__1__conv2"]])
    assert t_grad.abs().sum() > 0 and logit_grad.abs().sum() > 0


# -- DropBlock -----------------------------------------------------------------------------------
def test_dropblock_drops_whole_squares_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(2, 8, 12, 12, dtype=torch.float64)
    out = drop_block(x, rate=0.2, size=3)
    dropped = out == 0
    kept = (~dropped).sum().item()
    assert 0 < dropped.sum() and kept < x.numel()
    torch.testing.assert_close(out[~dropped], torch.full((kept,), x.numel() / kept, dtype=torch.float64))
    # every dropped unit lies in a fully dropped 3x3 square (an opening of the mask leaves it unchanged)
    mask = dropped.double()
    eroded = -F.max_pool2d(-mask, 3, stride=1)  # squares entirely dropped
    opened = F.max_pool2d(F.pad(eroded, (2, 2, 2, 2)), 3, stride=1)  # grown back to their squares
    assert torch.equal(opened.bool(), dropped)


def test_dropblock_is_off_by_default_and_in_evaluation():
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    plain, dropping = tiny_resnet(), tiny_resnet(dropblock_rate=0.3, dropblock_size=2)
    assert [b.dropblock_rate for b in dropping.blocks] == [0.0, 0.0, 0.3, 0.3]
    torch.testing.assert_close(dropping.eval()(x), plain.eval()(x))
    torch.manual_seed(1)
    assert not torch.allclose(dropping.train()(x), plain.train()(x))


# -- training from the config ------------------------------------------------------------------------
@pytest.mark.parametrize("algo", ["maml", "anil"])
def test_a_few_training_iterations_from_the_config(tmp_path, algo):
    from PIL import Image

    from metaplus.run import run

    root = tmp_path / "images"
    for c in range(8):
        for i in range(4):
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (20, 20), ((c * 31) % 256, (i * 50) % 256, 90)).save(root / f"class{c}" / f"{i}.png")
    overrides = [
        *QUICK,
        f"algo={algo}",
        "model=resnet12",
        "model.widths=[2,3,4,5]",
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=16",
        "data.split=ratios",
        "data.source.ratios=[0.5,0.25,0.25]",
        "data.ways=2",
        "data.shots=1",
        "data.queries=2",
        "data.batches_per_epoch=2",
        "data.meta_batch_size=2",
        "data.val_episodes=2",
        "data.test_episodes=2",
        "algo.test_inner_steps=2",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    metrics = run(compose_config(overrides, tmp_path / "run"))
    assert metrics["test/episodes"] == 2 and (tmp_path / "run" / "results.json").is_file()
