"""Pre-training baseline: supervised gradients by hand, per-episode head reset and fine-tuning switch,
a real run on sinusoid and on Omniglot."""

import csv
import math

import pytest
import torch
import torch.nn.functional as F

from metaplus.algorithms import Pretrain
from metaplus.data.episodes import Task
from metaplus.nn import MLP
from metaplus.run import build, run
from metaplus.testing import QUICK, QUICK_OMNIGLOT, needs_omniglot


def rand(g, *shape):
    return torch.randn(*shape, generator=g, dtype=torch.float64)


def classification_task(g, ways=3, shots=2, queries=2, num_classes=7, dim=5):
    """An episode whose labels 0..ways-1 stand for random global classes of the split; each class's
    inputs scatter around its own mean, so fine-tuning can learn them."""
    means = 2 * rand(torch.Generator().manual_seed(99), num_classes, dim)
    classes = torch.randperm(num_classes, generator=g)[:ways]
    support_y, query_y = torch.arange(ways).repeat(shots), torch.arange(ways).repeat(queries)
    points = lambda y: means[classes[y]] + 0.3 * rand(g, len(y), dim)
    return Task(
        points(support_y),
        support_y,
        points(query_y),
        query_y,
        support_classes=classes[support_y],
        query_classes=classes[query_y],
    )


def test_regression_gradient_is_the_pooled_mse_gradient():
    g = torch.Generator().manual_seed(0)
    model = MLP(input_shape=[2], hidden=[]).double()  # linear: f(x) = x w^T + b
    task = Task(rand(g, 4, 2), rand(g, 4, 1), rand(g, 6, 2), rand(g, 6, 1))
    loss, _ = Pretrain(model, "regression").task_loss(task)
    loss.backward()
    x, y = torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])
    residual = x @ model.head.weight.detach().T + model.head.bias.detach() - y
    torch.testing.assert_close(model.head.weight.grad, 2 / len(x) * residual.T @ x)
    torch.testing.assert_close(model.head.bias.grad, 2 / len(x) * residual.sum(0))


def test_classification_trains_an_all_classes_head_on_global_labels():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    model = MLP(input_shape=[5], output_dim=3, hidden=[4]).double()
    learner = Pretrain(model, "classification")
    learner.build_pretrain_head(7)
    learner.pretrain_head.double()
    task = classification_task(g)
    loss, _ = learner.task_loss(task)
    loss.backward()

    x = torch.cat([task.support_x, task.query_x])
    labels = torch.cat([task.support_classes, task.query_classes])
    features = model.body(x).detach()  # what the backbone feeds its head
    logits = features @ learner.pretrain_head.weight.detach().T + learner.pretrain_head.bias.detach()
    error = (logits.softmax(-1) - F.one_hot(labels, 7)) / len(x)  # d CE / d logits
    torch.testing.assert_close(learner.pretrain_head.weight.grad, error.T @ features)
    torch.testing.assert_close(learner.pretrain_head.bias.grad, error.sum(0))
    assert model.head.weight.grad is None, "the episode head is not pre-trained"
    assert model.body[0].weight.grad is not None


@pytest.mark.parametrize("finetune", ["head", "all"])
def test_each_episode_starts_from_a_zero_head_and_finetunes_the_chosen_parameters(finetune):
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = MLP(input_shape=[5], output_dim=3, hidden=[4]).double()
    learner = Pretrain(model, "classification", test_inner_steps=3, inner_lr=0.5, finetune=finetune)
    task = classification_task(g)
    with torch.no_grad():
        model.head.weight.normal_()  # as if something had changed it
    losses, scores = learner.evaluate_task(task, steps=3)
    assert all(torch.all(p == 0) for p in model.head.parameters())
    assert losses[0].item() == pytest.approx(math.log(3)), "zero logits: cross-entropy is log(ways)"
    assert losses[-1] < losses[0]

    adapted = learner.adapt(task, steps=2, first_order=True)
    body_moved = not torch.equal(adapted.body[0].weight, model.body[0].weight)
    assert body_moved == (finetune == "all")
    assert not torch.equal(adapted.head.weight, model.head.weight)


def test_bad_finetune_switch_fails_naming_the_key(make_config):
    from metaplus.config import ConfigError

    with pytest.raises(ConfigError, match="algo.finetune"):
        build(make_config(["algo=pretrain", "algo.finetune=body"]))


def test_pretraining_improves_finetuned_loss_on_sinusoid(make_config, tmp_path):
    overrides = [
        *QUICK,
        "algo=pretrain",
        "trainer.max_epochs=2",
        "data.batches_per_epoch=100",
        "data.meta_batch_size=10",
        "data.val_episodes=20",
        "data.test_episodes=100",
        "algo.meta_lr=0.003",
        "algo.finetune=all",
    ]
    trained = run(make_config(overrides, output_dir=tmp_path / "trained"))
    parts = build(make_config(overrides, output_dir=tmp_path / "untrained"))
    untrained = parts["trainer"].test(parts["learner"], datamodule=parts["datamodule"], verbose=False)[0]["test/mse"]
    print(f"pretrain sinusoid test/mse after fine-tuning: trained {trained['test/mse']:.3f}, untrained {untrained:.3f}")
    assert trained["test/mse"] < 0.9 * untrained, (trained["test/mse"], untrained)


@needs_omniglot
def test_pretraining_on_omniglot_lowers_the_all_classes_loss_and_finetuning_beats_chance(make_config, tmp_path):
    # A few dozen steps cannot pre-train 4,112 classes into features better than a random Conv-4's
    # (measured: 0.41 vs 0.35 accuracy even after 1,600 tasks), so this checks the mechanics: the
    # all-classes loss falls, each episode starts at chance from a zero head, and fine-tuning learns.
    out = tmp_path / "omniglot"
    overrides = [
        *QUICK_OMNIGLOT,
        "logger=csv",
        "algo=pretrain",
        "algo.inner_lr=0.4",
        "algo.test_inner_steps=3",
    ]
    metrics = run(make_config(overrides, output_dir=out))
    rows = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    print(f"pretrain omniglot: train/loss {losses[0]:.2f} -> {losses[-1]:.2f}; 5w1s test/acc {metrics['test/acc']:.3f}")
    assert len(losses) >= 20 and losses[0] == pytest.approx(math.log(4112), rel=0.1), (
        "starts near ln(#classes)",
        losses,
    )
    assert sum(losses[-5:]) / 5 < losses[0] - 0.1, losses
    assert metrics["test/acc_step0"] == pytest.approx(0.2), "a zero head predicts one class: chance for 5 ways"
    assert metrics["test/acc"] > 0.3
