"""MAML++'s six switches: each changes its own piece, checked against direct computations."""

import math

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

from metaplus.algorithms import MAML
from metaplus.config import ConfigError, instantiate_group
from metaplus.data.episodes import Task
from metaplus.mamlpp_switches import SWITCHES
from metaplus.nn import Conv4, PerStepBatchNorm2d
from metaplus.nn.init_from import split_init_from
from metaplus.run import build
from metaplus.schedules import first_order_at, msl_weights
from metaplus.testing import QUICK, quiet_trainer


def at_epoch(learner: MAML, epoch: int, max_epochs: int = 100) -> MAML:
    """Attach a real (idle) Trainer whose current epoch is ``epoch``: schedules read it from there."""
    trainer = quiet_trainer(max_epochs=max_epochs)
    trainer.fit_loop.epoch_progress.current.completed = epoch
    learner.trainer = trainer
    return learner


def image_task(ways=3, shots=2, queries=2, shape=(1, 16, 16), seed=0) -> Task:
    g = torch.Generator().manual_seed(seed)
    support_y = torch.arange(ways).repeat_interleave(shots)
    query_y = torch.arange(ways).repeat_interleave(queries)
    return Task(
        torch.randn(len(support_y), *shape, generator=g),
        support_y,
        torch.randn(len(query_y), *shape, generator=g),
        query_y,
    )


def conv_learner(**switches) -> MAML:
    torch.manual_seed(0)
    backbone = Conv4(input_shape=[1, 16, 16], output_dim=3, filters=4)
    return MAML(backbone, "classification", inner_steps=3, test_inner_steps=5, inner_lr=0.1, **switches)


# -- MSL ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("steps", [1, 2, 5])
def test_msl_weights_follow_the_reference_schedule_and_sum_to_one(steps):
    epochs = 10
    floor, decay = 0.03 / steps, 1.0 / (steps * epochs)
    for epoch in range(epochs + 3):
        w = msl_weights(steps, epoch, epochs)
        assert w.shape == (steps,) and w.sum().item() == pytest.approx(1.0)
        if epoch >= epochs:  # annealing over: only the final step's loss
            assert w[-1] == 1 and (w[:-1] == 0).all()
            continue
        expected_non_final = max(1.0 / steps - epoch * decay, floor)
        torch.testing.assert_close(w[:-1], torch.full((steps - 1,), expected_non_final, dtype=w.dtype))
    assert torch.allclose(msl_weights(steps, 0, epochs), torch.full((steps,), 1.0 / steps, dtype=torch.float64))
    if steps > 1:  # the final weight grows monotonically while the others shrink
        finals = [msl_weights(steps, e, epochs)[-1].item() for e in range(epochs + 1)]
        assert finals == sorted(finals) and finals[0] < finals[-1]


def test_msl_loss_is_the_weighted_query_loss_of_every_inner_step():
    task = image_task()
    learner = at_epoch(conv_learner(msl=True, msl_epochs=4), epoch=2)
    loss, _ = learner.task_loss(task)
    # L_Q(theta_i) from plain MAML learners with i inner steps and the same initialisation
    per_step = []
    for i in (1, 2, 3):
        plain = conv_learner()
        plain.inner_steps = i
        per_step.append(plain.task_loss(task)[0])
    weights = msl_weights(3, 2, 4).float()
    torch.testing.assert_close(loss, (weights * torch.stack(per_step)).sum())
    assert not torch.allclose(loss, per_step[-1])  # the weighting really mixes steps
    # after msl_epochs only the final step counts: exactly MAML's loss
    torch.testing.assert_close(at_epoch(learner, epoch=4).task_loss(task)[0], per_step[-1])


# -- DA -----------------------------------------------------------------------------------------
class TinyLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 1)

    def forward(self, x, step=0):
        return self.head(x)


def direct_meta_gradient(model: nn.Module, task: Task, alpha: float, steps: int, second_order: bool):
    """d L_Q(theta_N) / d theta by plain autograd on the functional parameters."""
    theta = [p.detach().clone().requires_grad_() for p in model.parameters()]
    fast = theta
    for _ in range(steps):
        loss = F.mse_loss(F.linear(task.support_x, *fast), task.support_y)
        grads = torch.autograd.grad(loss, fast, create_graph=second_order)
        fast = [p - alpha * g for p, g in zip(fast, grads)]
    if not second_order:  # first order: differentiate w.r.t. theta_N itself, as if it were theta
        fast = [p.detach().requires_grad_() for p in fast]
        query = F.mse_loss(F.linear(task.query_x, *fast), task.query_y)
        return torch.autograd.grad(query, fast)
    query = F.mse_loss(F.linear(task.query_x, *fast), task.query_y)
    return torch.autograd.grad(query, theta)


def test_derivative_order_annealing_switches_from_first_to_second_order():
    g = torch.Generator().manual_seed(1)
    task = Task(*(torch.randn(n, d, generator=g, dtype=torch.float64) for n, d in ((8, 3), (8, 1), (9, 3), (9, 1))))
    torch.manual_seed(0)
    model = TinyLinear().double()
    learner = MAML(model, "regression", inner_steps=2, inner_lr=0.3, da=True, da_epochs=3)
    first = direct_meta_gradient(model, task, 0.3, 2, second_order=False)
    second = direct_meta_gradient(model, task, 0.3, 2, second_order=True)
    assert not torch.allclose(first[0], second[0])
    for epoch, expected in [(0, first), (2, first), (3, second), (7, second)]:
        at_epoch(learner, epoch)
        assert learner.training_first_order() == first_order_at(epoch, 3) == (epoch < 3)
        got = torch.autograd.grad(learner.task_loss(task)[0], list(model.parameters()))
        for g_, e in zip(got, expected):
            torch.testing.assert_close(g_, e)
    # without the switch MAML stays second order from the start
    plain = at_epoch(MAML(model, "regression", inner_steps=2, inner_lr=0.3), 0)
    torch.testing.assert_close(torch.autograd.grad(plain.task_loss(task)[0], list(model.parameters()))[0], second[0])


# -- LSLR ---------------------------------------------------------------------------------------
def test_lslr_rates_drive_the_inner_update_and_get_gradients():
    learner = conv_learner(lslr=True)
    names = learner.adapted_names()
    assert set(learner.lr_names) == names and all(learner.inner_lrs[k].shape == (3,) for k in learner.lr_names.values())
    assert all(torch.all(r == 0.1) for r in learner.inner_lrs.values())
    # a zero rate at step 0 freezes that tensor in the first step; the others move
    key = learner.lr_names["head.weight"]
    with torch.no_grad():
        learner.inner_lrs[key][0] = 0.0
    task = image_task()
    adapted = learner.adapt(task, 1, first_order=False)
    torch.testing.assert_close(adapted.head.weight, learner.backbone.head.weight)
    assert not torch.allclose(adapted.head.bias, learner.backbone.head.bias)
    # the outer loss reaches every rate of every step
    loss, _ = learner.task_loss(task)
    grads = torch.autograd.grad(loss, list(learner.inner_lrs.values()))
    assert all(g.abs().min() > 0 for g in grads)


def test_lslr_rates_move_in_training_and_are_logged(make_config, tmp_path):
    cfg = make_config([*QUICK, "algo.lslr=true", "algo.inner_steps=2", "logger=csv"], output_dir=tmp_path / "r")
    parts = build(cfg)
    learner = parts["learner"]
    before = {k: v.detach().clone() for k, v in learner.inner_lrs.items()}
    parts["trainer"].fit(learner, datamodule=parts["datamodule"])
    moved = [not torch.equal(before[k], v.detach()) for k, v in learner.inner_lrs.items()]
    assert all(moved)
    header = (tmp_path / "r" / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {
        "inner_lr/head.weight/step1",
        "inner_lr/head.weight/step2",
        "inner_lr/mean/step2",
        "train/derivative_order",
    } <= set(header)


# -- BNRS / BNWB --------------------------------------------------------------------------------
def bn_outputs_by_step(learner: MAML, task: Task):
    """Run evaluation's adaptation and record (step, input, output, (weight, bias)) of the first BN
    layer's calls; the affine parameters are the adapted clone's at that moment (the inner loop
    changes them)."""
    norm = learner.backbone.blocks[0].norm
    calls = []
    handle = norm.register_forward_hook(
        lambda m, args, kwargs, out: calls.append((kwargs["step"], args[0], out, (m.weight, m.bias))), with_kwargs=True
    )
    try:
        learner.evaluate_task(task, learner.test_inner_steps)
    finally:
        handle.remove()
    return norm, calls


def test_bnrs_keeps_one_set_of_statistics_per_step_and_evaluation_uses_the_matching_one():
    learner = conv_learner(bnrs=True, bn_stats="running")
    norm = learner.backbone.blocks[0].norm
    assert norm.running_mean.shape == (3, 4) and norm.weight.shape == (4,)
    learner.train()
    learner.task_loss(image_task(seed=1))  # the inner loop's forward passes update the step's stats
    means = norm.running_mean
    assert (means.abs().sum(dim=1) > 0).all()
    assert not torch.allclose(means[0], means[1]) and not torch.allclose(means[1], means[2])

    learner.eval()
    stats = (norm.running_mean.clone(), norm.running_var.clone())
    norm, calls = bn_outputs_by_step(learner, image_task(seed=2))
    assert [c[0] for c in calls] == [0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4]  # before, then support/query per step
    for step, x, out, (weight, bias) in calls:
        k = min(step, 2)  # evaluation past the trained steps reuses the last set
        expected = F.batch_norm(x, stats[0][k], stats[1][k], weight, bias, training=False)
        torch.testing.assert_close(out, expected)
    torch.testing.assert_close(norm.running_mean, stats[0])  # evaluation never updates statistics


def test_batch_stats_mode_normalises_with_the_batch_even_in_evaluation():
    learner = conv_learner(bnrs=True)  # bn_stats=batch: the reference code's transductive BN
    learner.train()
    learner.task_loss(image_task(seed=1))
    learner.eval()
    norm, calls = bn_outputs_by_step(learner, image_task(seed=2))
    for _, x, out, (weight, bias) in calls:
        torch.testing.assert_close(out, F.batch_norm(x, None, None, weight, bias, training=True))


def test_bnwb_selects_affine_parameters_by_step_and_does_not_adapt_them():
    learner = conv_learner(bnwb=True)
    norm = learner.backbone.blocks[1].norm
    assert norm.weight.shape == (3, 4) and norm.running_mean is None
    bn_names = {f"blocks.{i}.norm.{p}" for i in range(4) for p in ("weight", "bias")}
    assert learner.adapted_names() == {n for n, _ in learner.backbone.named_parameters()} - bn_names
    with torch.no_grad():
        norm.weight.copy_(torch.rand(3, 4) + 0.5)
        norm.bias.copy_(torch.randn(3, 4))
    x = torch.randn(5, 4, 6, 6)
    for step in (0, 1, 2, 7):
        k = min(step, 2)
        expected = F.batch_norm(x, None, None, norm.weight[k], norm.bias[k], training=True)
        torch.testing.assert_close(norm(x, step=step), expected)
    task = image_task()
    adapted = learner.adapt(task, 2, first_order=False)
    torch.testing.assert_close(adapted.blocks[1].norm.weight, norm.weight)
    assert not torch.allclose(adapted.blocks[1].conv.weight, learner.backbone.blocks[1].conv.weight)
    # meta-learned: the outer loss reaches every step's set that was used in the inner loop
    grad = torch.autograd.grad(learner.task_loss(task)[0], norm.weight)[0]
    assert (grad.abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("switch", SWITCHES)
def test_each_switch_alone_changes_only_its_own_piece(switch):
    def shapes(learner):
        params = {n: tuple(p.shape) for n, p in learner.named_parameters()}
        buffers = {n: tuple(b.shape) for n, b in learner.named_buffers()}
        return params, buffers, learner.adapted_names()

    plain, alone = shapes(conv_learner()), shapes(conv_learner(**{switch: True}))
    changed = {k for k, a, b in zip(("params", "buffers", "adapted"), plain, alone) if a != b}
    # BN weights/biases are never adapted in plain MAML (adapt_bn_affine=false, as the reference
    # codes), so BNWB changes only the number of affine sets, not what the inner loop adapts.
    expected = {"lslr": {"params"}, "bnrs": {"buffers"}, "bnwb": {"params"}}.get(switch, set())
    assert changed == expected
    if switch == "lslr":
        assert set(alone[0]) - set(plain[0]) == {f"inner_lrs.{k}" for k in conv_learner(lslr=True).lr_names.values()}


# -- CA -----------------------------------------------------------------------------------------
class RecordLR(L.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_epoch_start(self, trainer, module):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("ca", [True, False])
def test_cosine_annealing_of_the_outer_lr(make_config, tmp_path, ca):
    epochs, lr, lr_min = 4, 0.003, 0.0002
    cfg = make_config(
        [
            *QUICK,
            f"trainer.max_epochs={epochs}",
            "data.batches_per_epoch=1",
            "data.meta_batch_size=2",
            f"algo.ca={str(ca).lower()}",
            f"algo.meta_lr={lr}",
            f"algo.min_meta_lr={lr_min}",
        ],
        output_dir=tmp_path / "ca",
    )
    parts = build(cfg)
    recorder = RecordLR()
    parts["trainer"].callbacks.append(recorder)
    parts["trainer"].fit(parts["learner"], datamodule=parts["datamodule"])
    if ca:
        expected = [lr_min + (lr - lr_min) * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)]
    else:
        expected = [lr] * epochs
    assert recorder.lrs == pytest.approx(expected, rel=1e-9)


# -- configs ------------------------------------------------------------------------------------
def test_mamlpp_is_maml_with_the_six_switches_on(make_config):
    mamlpp = make_config(["algo=mamlpp"]).algo
    declared = OmegaConf.to_container(mamlpp)
    maml = make_config(
        [
            "algo=maml",
            *(f"algo.{s}=true" for s in SWITCHES),
            *(f"algo.{k}={declared[k]}" for k in ("inner_steps", "test_inner_steps", "inner_lr")),
        ]
    ).algo
    a, b = OmegaConf.to_container(mamlpp, resolve=True), OmegaConf.to_container(maml, resolve=True)
    assert a.pop("name") == "mamlpp" and b.pop("name") == "maml"
    assert a == b
    assert all(a[s] is True for s in SWITCHES) and a["inner_steps"] == a["test_inner_steps"] == 5
    plain = OmegaConf.to_container(make_config(["algo=maml"]).algo)
    assert not any(plain[s] for s in SWITCHES)


def test_mamlpp_builds_on_conv4(make_config):
    cfg = make_config(
        ["algo=mamlpp", "model=conv4", "data.input_shape=[1,28,28]", "data.output_dim=5", "model.filters=4"]
    )
    backbone = instantiate(split_init_from(cfg.model)[0], _convert_="all")
    learner = instantiate_group(cfg.algo, "algo", backbone=backbone, task_type="classification")
    norms = [m for m in backbone.modules() if isinstance(m, PerStepBatchNorm2d)]
    assert all(m.weight.shape == (5, 4) and m.running_mean.shape == (5, 4) for m in norms)
    assert learner.lslr and learner.ca and learner.msl and learner.da


@pytest.mark.parametrize(
    "override, key",
    [
        ("algo.min_meta_lr=0.1", "algo.min_meta_lr"),
        ("algo.bn_stats=moving", "algo.bn_stats"),
        ("algo.msl=maybe", "algo.msl"),
        ("algo.da_epochs=-1", "algo.da_epochs"),
    ],
)
def test_bad_switch_values_name_their_key(make_config, override, key):
    cfg = make_config([override])
    backbone = instantiate(split_init_from(cfg.model)[0], _convert_="all")
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        instantiate_group(cfg.algo, "algo", backbone=backbone, task_type="regression")


# -- the reference codes' details --------------------------------------------------------------
def test_batch_norm_affine_is_not_adapted_unless_asked():
    bn = {n for n, _ in conv_learner().backbone.named_parameters() if ".norm." in n}
    assert bn and not bn & conv_learner().adapted_names(), "MAML (as Finn's and the MAML++ code) never adapts BN"
    assert bn <= conv_learner(adapt_bn_affine=True).adapted_names()
    assert not bn & conv_learner(adapt_bn_affine=True, bnwb=True).adapted_names(), "BNWB never adapts them"
    # with BN frozen in the inner loop, an inner step leaves them unchanged but they still get a meta-gradient
    learner = conv_learner()
    task = image_task()
    adapted = learner.adapt(task, 1, first_order=False)
    before = dict(learner.backbone.named_parameters())
    for name, p in adapted.named_parameters():
        if name in bn:
            assert torch.equal(p, before[name])
    F.cross_entropy(adapted(task.query_x), task.query_y).backward()
    assert all(before[n].grad is not None and before[n].grad.abs().sum() > 0 for n in bn)


def test_inert_switches_are_named_at_start():
    learner = MAML(
        Conv4(input_shape=[1, 16, 16], output_dim=3, filters=4),
        "classification",
        inner_steps=2,
        da=True,
        da_epochs=50,
        msl=True,
        msl_epochs=15,
        bnrs=True,
        ca=True,
        meta_lr=1e-3,
        min_meta_lr=1e-3,
    )
    found = " | ".join(learner.inert_switches(max_epochs=20))
    assert "algo.da=true with algo.da_epochs=50 >= trainer.max_epochs=20" in found
    assert (
        "algo.msl_epochs=15 > trainer.max_epochs=20" not in found
        and "algo.msl_epochs=15 > trainer.max_epochs=10" in " | ".join(learner.inert_switches(max_epochs=10))
    )
    assert "algo.bnrs=true with algo.bn_stats=batch" in found and "cosine schedule is constant" in found
    quiet = MAML(
        Conv4(input_shape=[1, 16, 16], output_dim=3, filters=4),
        "classification",
        inner_steps=2,
        da=True,
        da_epochs=5,
        msl=True,
        msl_epochs=10,
        bnrs=True,
        bn_stats="running",
    )
    assert quiet.inert_switches(max_epochs=20) == []


def test_inert_da_warns_when_fit_starts(make_config):
    cfg = make_config([*QUICK, "algo.da=true", "algo.da_epochs=3"])
    parts = build(cfg)
    with pytest.warns(UserWarning, match="algo.da_epochs=3 >= trainer.max_epochs=1"):
        parts["trainer"].fit(parts["learner"], datamodule=parts["datamodule"])
