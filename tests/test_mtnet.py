"""T-nets and MT-nets: T layers, masked inner updates, gradients to T and to the mask logits, the
reduction to MAML, reproducible masks, and short real runs (sinusoid MLP, Omniglot Conv-4)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metaplus.algorithms import MAML, MTNet
from metaplus.compose import compose_config
from metaplus.config import ConfigError
from metaplus.data.episodes import Task, TaskBatch
from metaplus.nn import MLP, Conv4
from metaplus.nn.transform import Transformed, insert_transforms, transform_parameter_names
from metaplus.run import run
from metaplus.testing import QUICK, needs_omniglot

SURE = 30.0  # |logit| beyond the clamped logistic noise (|noise| <= 13.9): the mask value is certain


def regression_task(seed: int = 0, dim: int = 1, shots: int = 6, queries: int = 8) -> Task:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    return Task(rand(shots, dim), rand(shots, 1), rand(queries, dim), rand(queries, 1))


def tiny_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(input_shape=(1,), output_dim=1, hidden=[6, 5]).double()


def set_logits(learner: MTNet, key: str, values) -> None:
    with torch.no_grad():
        learner.mask_logits[key].copy_(torch.as_tensor(values, dtype=learner.mask_logits[key].dtype))


# -- the T layers ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make",
    [lambda: MLP(input_shape=(3,), hidden=[8, 8]), lambda: Conv4(input_shape=(1, 16, 16), output_dim=4, filters=6)],
)
def test_inserted_identity_transforms_keep_the_function_and_wrap_every_linear_map(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(4, *(model.input_shape if hasattr(model, "input_shape") else (3,)))
    before = model(x)
    maps = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    wrapped = insert_transforms(model)
    assert sorted(wrapped) == sorted(maps) and "head" in wrapped
    assert isinstance(model.head, Transformed)  # the backbone contract: model.head still is the head
    torch.testing.assert_close(model(x), before)
    for layer in wrapped.values():
        torch.testing.assert_close(layer.transform.weight, torch.eye(layer.units))
    assert insert_transforms(model).keys() == wrapped.keys()  # idempotent: no T of a T
    assert transform_parameter_names(model) == {f"{n}.transform.weight" for n in maps}


def test_a_conv_transform_mixes_channels_at_every_pixel():
    torch.manual_seed(1)
    layer = Transformed(nn.Conv2d(2, 3, kernel_size=3, padding=1))
    with torch.no_grad():
        layer.transform.weight.copy_(torch.randn(3, 3))
    x = torch.randn(2, 2, 5, 5)
    expected = torch.einsum("oc,bchw->bohw", layer.transform.weight, layer.layer(x))
    torch.testing.assert_close(layer(x), expected)


# -- masked inner updates --------------------------------------------------------------------------
def test_masked_rows_of_w_and_their_biases_stay_while_unmasked_rows_move():
    """One inner step: the masked update is the full update with the masked rows (and biases) zeroed."""
    full = MTNet(tiny_mlp(), "regression", inner_lr=0.1, logit_init=SURE)
    masked = MTNet(tiny_mlp(), "regression", inner_lr=0.1)
    rows = torch.tensor([SURE, -SURE, SURE, -SURE, -SURE, SURE], dtype=torch.float64)
    set_logits(masked, "body__0", rows)
    task = regression_task()
    step_full = {
        n: p - masked.backbone.get_parameter(n)
        for n, p in full.adapt(task, steps=1, first_order=True).named_parameters()
    }
    step = {
        n: p - masked.backbone.get_parameter(n)
        for n, p in masked.adapt(task, steps=1, first_order=True).named_parameters()
    }
    keep = rows > 0
    assert step_full["body.0.layer.weight"][~keep].abs().sum() > 0  # the mask has something to stop
    torch.testing.assert_close(step["body.0.layer.weight"], step_full["body.0.layer.weight"] * keep[:, None])
    torch.testing.assert_close(step["body.0.layer.bias"], step_full["body.0.layer.bias"] * keep)
    assert torch.all(step["body.0.layer.weight"][~keep] == 0) and torch.all(step["body.0.layer.bias"][~keep] == 0)
    assert step["body.0.layer.weight"][keep].abs().sum() > 0


def test_sampled_masks_decide_which_rows_move_and_entry_masks_mask_single_weights():
    full = MTNet(tiny_mlp(), "regression", inner_lr=0.1, logit_init=SURE)
    learner = MTNet(tiny_mlp(), "regression", inner_lr=0.1, mask_seed=3)  # logits 0: P(update) = 0.5
    noise = learner.draw_noise(torch.Generator().manual_seed(3))  # what the fallback generator draws first
    task = regression_task()
    w0 = learner.backbone.body[2].layer.weight
    step_full = full.adapt(task, steps=1, first_order=True).body[2].layer.weight - w0
    step = learner.adapt(task, steps=1, first_order=True).body[2].layer.weight - w0
    expected_rows = noise["body__2"] > 0
    assert 0 < expected_rows.sum() < expected_rows.numel()  # a real mixture, so the test can fail
    assert step_full[~expected_rows].abs().sum() > 0
    torch.testing.assert_close(step, step_full * expected_rows[:, None])

    entry = MTNet(tiny_mlp(), "regression", inner_lr=0.1, share_M=False)
    live = torch.nonzero(step_full != 0)  # entries a full update moves (ReLU can leave some at 0)
    assert len(live) >= 3
    pattern = torch.full((5, 6), -SURE, dtype=torch.float64)
    pattern[live[0, 0], live[0, 1]] = pattern[live[-1, 0], live[-1, 1]] = SURE  # two moving entries kept
    set_logits(entry, "body__2__layer__weight", pattern)
    step = entry.adapt(task, steps=1, first_order=True).body[2].layer.weight - w0
    assert torch.equal(step != 0, pattern > 0)
    torch.testing.assert_close(step, step_full * (pattern > 0))


def test_transforms_get_outer_gradients_and_no_inner_update():
    learner = MTNet(tiny_mlp(), "regression", inner_steps=2, inner_lr=0.1, logit_init=SURE)
    with torch.no_grad():  # a non-identity T, so every T's role in the forward pass is generic
        for layer in (learner.backbone.body[0], learner.backbone.body[2], learner.backbone.head):
            layer.transform.weight.add_(0.1 * torch.randn_like(layer.transform.weight))
    assert not learner.adapted_names() & transform_parameter_names(learner.backbone)
    task = regression_task()
    adapted = learner.adapt(task, steps=2, first_order=True)
    for name, param in adapted.named_parameters():
        original = learner.backbone.get_parameter(name)
        if name.endswith("transform.weight"):
            assert torch.equal(param, original), name
        elif name.endswith("layer.weight"):
            assert not torch.equal(param, original), name
    for first_order in (False, True):
        learner.zero_grad()
        learner.first_order = first_order
        loss, _ = learner.task_loss(task)
        loss.backward()
        for name in transform_parameter_names(learner.backbone):
            grad = learner.backbone.get_parameter(name).grad
            assert grad is not None and grad.abs().sum() > 0, (name, first_order)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_mask_logits_get_the_straight_through_gumbel_softmax_gradient(temperature):
    """One linear layer, no T: compare d(query loss)/d(zeta) with dL/dM * d(soft mask)/d(zeta) by hand."""

    class Linear(nn.Module):
        def __init__(self):
            super().__init__()
            self.head = nn.Linear(3, 4)

        def forward(self, x, step=0):
            return self.head(x)

    torch.manual_seed(2)
    model = Linear().double()
    learner = MTNet(model, "regression", inner_lr=0.3, use_T=False, temperature=temperature)
    set_logits(learner, "head", [0.5, -0.3, 1.2, -1.0])
    g = torch.Generator().manual_seed(4)
    task = Task(
        torch.randn(5, 3, generator=g, dtype=torch.float64),
        torch.randn(5, 4, generator=g, dtype=torch.float64),
        torch.randn(7, 3, generator=g, dtype=torch.float64),
        torch.randn(7, 4, generator=g, dtype=torch.float64),
    )
    noise = learner.draw_noise(torch.Generator().manual_seed(9))
    learner.pending_noise = [noise]
    loss, _ = learner.task_loss(task)
    loss.backward()

    zeta = learner.mask_logits["head"].detach()
    shifted = zeta + noise["head"].double()
    soft = torch.sigmoid(shifted / temperature)
    mask = (shifted > 0).double().requires_grad_()
    w, b = model.head.weight.detach(), model.head.bias.detach()
    gw, gb = support_grads(task, w, b)
    w2, b2 = w - 0.3 * mask[:, None] * gw, b - 0.3 * mask * gb
    (d_mask,) = torch.autograd.grad(F.mse_loss(task.query_x @ w2.T + b2, task.query_y), mask)
    expected = d_mask * soft * (1 - soft) / temperature
    assert expected.abs().sum() > 0
    torch.testing.assert_close(learner.mask_logits["head"].grad, expected)


def support_grads(task, w, b):
    w, b = w.clone().requires_grad_(), b.clone().requires_grad_()
    return torch.autograd.grad(F.mse_loss(task.support_x @ w.T + b, task.support_y), (w, b))


# -- the reduction to MAML -------------------------------------------------------------------------
@pytest.mark.parametrize("use_T,use_M", [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("first_order", [False, True])
def test_identity_t_and_full_mask_give_exactly_maml(use_T, use_M, first_order):
    maml_model = tiny_mlp(seed=4)
    mt_model = copy.deepcopy(maml_model)
    maml = MAML(maml_model, "regression", inner_steps=2, inner_lr=0.05, first_order=first_order)
    mt = MTNet(
        mt_model,
        "regression",
        inner_steps=2,
        inner_lr=0.05,
        first_order=first_order,
        use_T=use_T,
        use_M=use_M,
        logit_init=SURE,
    )
    plain = lambda name: name.replace(".layer.", ".")
    task = regression_task(seed=5)

    adapted_maml = dict(maml.adapt(task, 2, first_order).named_parameters())
    adapted_mt = {plain(n): p for n, p in mt.adapt(task, 2, first_order).named_parameters() if "transform" not in n}
    assert adapted_mt.keys() == adapted_maml.keys()
    for name in adapted_maml:
        torch.testing.assert_close(adapted_mt[name], adapted_maml[name])

    loss_maml, _ = maml.task_loss(task)
    loss_mt, _ = mt.task_loss(task)
    torch.testing.assert_close(loss_mt, loss_maml)
    loss_maml.backward()
    loss_mt.backward()
    grads_mt = {plain(n): p.grad for n, p in mt.backbone.named_parameters() if "transform" not in n}
    for name, param in maml.backbone.named_parameters():
        torch.testing.assert_close(grads_mt[name], param.grad)


# -- reproducible masks ----------------------------------------------------------------------------
def batch_of(indices: list[int]) -> TaskBatch:
    n = len(indices)
    return TaskBatch(
        torch.zeros(n, 2, 1), torch.zeros(n, 2, 1), torch.zeros(n, 2, 1), torch.zeros(n, 2, 1), torch.tensor(indices)
    )


def test_mask_noise_is_a_function_of_the_episode_not_of_its_position():
    learner = MTNet(MLP(hidden=[4]), "regression", mask_seed=1)
    learner.queue_noise(batch_of([3, 7]), "train", epoch=2, batch_idx=0)
    first = learner.pending_noise
    learner.queue_noise(batch_of([7, 3]), "train", epoch=2, batch_idx=5)
    swapped = learner.pending_noise
    for key in first[0]:
        assert torch.equal(first[0][key], swapped[1][key]) and torch.equal(first[1][key], swapped[0][key])
        assert not torch.equal(first[0][key], first[1][key])
    learner.queue_noise(batch_of([3, 7]), "train", epoch=3, batch_idx=0)
    assert not torch.equal(learner.pending_noise[0]["body__0"], first[0]["body__0"])  # new epoch, new masks
    other_seed = MTNet(MLP(hidden=[4]), "regression", mask_seed=2)
    other_seed.queue_noise(batch_of([3, 7]), "train", epoch=2, batch_idx=0)
    assert not torch.equal(other_seed.pending_noise[0]["body__0"], first[0]["body__0"])


def test_mask_per_batch_shares_one_draw_across_the_tasks_of_a_batch():
    learner = MTNet(MLP(hidden=[4]), "regression", mask_per="batch")
    learner.queue_noise(batch_of([0, 1, 2]), "train", epoch=0, batch_idx=4)
    noises = learner.pending_noise
    assert len(noises) == 3 and all(n is noises[0] for n in noises)
    learner.queue_noise(batch_of([3, 4, 5]), "train", epoch=0, batch_idx=5)
    assert not torch.equal(learner.pending_noise[0]["head"], noises[0]["head"])


@pytest.mark.parametrize("key,value", [("temperature", 0.0), ("mask_per", "step"), ("use_M", "yes"), ("mask_seed", -1)])
def test_bad_values_fail_naming_their_key(key, value):
    with pytest.raises(ConfigError, match=key):
        MTNet(MLP(hidden=[4]), "regression", **{key: value})


# -- real runs -------------------------------------------------------------------------------------
def test_tnet_config_is_mtnet_without_the_mask(tmp_path):
    tnet = compose_config(["algo=tnet"], tmp_path).algo
    mtnet = compose_config(["algo=mtnet"], tmp_path).algo
    assert tnet.use_M is False and mtnet.use_M is True and tnet._target_ == mtnet._target_
    assert {k: v for k, v in tnet.items() if k not in ("name", "use_M")} == {
        k: v for k, v in mtnet.items() if k not in ("name", "use_M")
    }


@pytest.mark.parametrize(
    "experiment", sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("mtnet_*.yaml"))
)
def test_mtnet_experiment_configs_compose_for_mtnet_and_maml(experiment, tmp_path):
    for algo in ("mtnet", "maml"):
        cfg = compose_config([f"experiment={experiment}", f"algo={algo}"], tmp_path)
        assert cfg.algo.name == algo


def hand_update_fractions(ckpt_path) -> dict[str, float]:
    """P(M = 1) per layer from the checkpoint's mask logits: the mean of sigmoid(logit) over the
    layer's entries (weights and bias pooled), and over every entry (``all``)."""
    checkpoint = torch.load(ckpt_path, weights_only=False)
    shared = checkpoint["hyper_parameters"]["share_M"]  # one logit per unit, keyed by layer; else per parameter
    per_layer: dict[str, list] = {}
    for key, logits in checkpoint["state_dict"].items():
        if key.startswith("mask_logits."):
            name = key[len("mask_logits.") :].replace("__", ".")
            layer = name if shared else name.rsplit(".", 1)[0]
            per_layer.setdefault(layer, []).append(torch.sigmoid(logits.double()).flatten())
    out = {f"mtnet/update_fraction/{layer}": float(torch.cat(v).mean()) for layer, v in per_layer.items()}
    out["mtnet/update_fraction/all"] = float(torch.cat([torch.cat(v) for v in per_layer.values()]).mean())
    return out


def test_mtnet_trains_on_sinusoid_and_reports_update_fractions(tmp_path):
    out = tmp_path / "run"
    cfg = compose_config(QUICK + ["algo=mtnet", "data=sinusoid", "model=mlp", "data.batches_per_epoch=4"], out)
    metrics = run(cfg)
    saved = json.loads((out / "results.json").read_text())
    layers = ("body.0", "body.2", "head", "all")
    for key in [f"mtnet/update_fraction/{layer}" for layer in layers] + ["test/mse"]:
        assert saved[key] == metrics[key], key
    fractions = hand_update_fractions(metrics["best_checkpoint"])  # float64 here, float32 in the learner
    assert {k: saved[k] for k in fractions} == pytest.approx(fractions, rel=1e-6)
    assert fractions.keys() == {f"mtnet/update_fraction/{layer}" for layer in layers}
    assert saved["tnet/transform_change/head"] > 0  # the outer loop moved T
    assert saved["global_step"] == 4


@needs_omniglot
def test_mtnet_trains_a_conv4_on_omniglot(tmp_path, request):
    cache = request.config.cache.mkdir("metaplus-image-cache")  # shared with the image-data tests
    out = tmp_path / "run"
    cfg = compose_config(
        QUICK
        + [
            "algo=mtnet",
            "data=omniglot",
            "model=conv4",
            "model.filters=8",
            "data.queries=2",
            "data.meta_batch_size=2",
            "data.batches_per_epoch=2",
            "algo.test_inner_steps=2",
            "data.val_episodes=4",
            "data.test_episodes=4",
            f"data.cache_dir={cache}",
        ],
        out,
    )
    metrics = run(cfg)
    # 4 episodes of 5 ways x 2 queries: each episode's accuracy is k/10, their mean a multiple of 1/40
    assert metrics["test/acc"] * 40 == pytest.approx(round(metrics["test/acc"] * 40), abs=1e-6)
    fractions = hand_update_fractions(metrics["best_checkpoint"])
    assert {k: metrics[k] for k in fractions} == pytest.approx(fractions, rel=1e-6)
    assert {f"mtnet/update_fraction/blocks.{i}.conv" for i in range(4)} | {
        "mtnet/update_fraction/head"
    } <= metrics.keys()
