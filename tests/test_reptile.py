"""Reptile: the outer step is phi + eps * mean_b(W_b - phi) with eps annealed linearly, run by a real Trainer.

On linear least squares (grad L = A w - b, A = 2/n X^T X, b = 2/n X^T y) the k inner SGD steps are written
out by hand, so the whole meta-update is a direct computation.
"""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from metaplus.algorithms import Reptile
from metaplus.algorithms.reptile import adam
from metaplus.config import ConfigError
from metaplus.data.episodes import Task, collate_tasks
from metaplus.run import build
from metaplus.testing import (
    QUICK,
    QUICK_OMNIGLOT,
    TinyLinear,
    needs_omniglot,
    quadratic_terms,
    quiet_trainer,
    trained_vs_untrained,
)


def random_tasks(count, seed=2, dim=3):
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    return [Task(rand(5, dim), rand(5, 1), rand(7, dim), rand(7, 1)) for _ in range(count)]


def inner_sgd(w, x, y, lr, steps):
    a, b = quadratic_terms(x, y)
    for _ in range(steps):
        w = w - lr * (a @ w - b)
    return w


def fit(learner, batches, trainer_kwargs, ckpt_path=None):
    loader = DataLoader([(i, t) for i, t in enumerate(batches)], batch_size=2, collate_fn=collate_tasks)
    trainer = quiet_trainer(num_sanity_val_steps=0, limit_val_batches=0, **trainer_kwargs)
    trainer.fit(learner, train_dataloaders=loader, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("train_on", ["support", "support_query"])
def test_outer_update_is_the_annealed_interpolation(train_on):
    torch.manual_seed(0)
    tasks = random_tasks(4)  # two meta-batches of two tasks
    model = TinyLinear(3).double()
    phi = model.head.weight.detach().T.clone()
    meta_lr, inner_lr, k = 0.8, 0.05, 3
    learner = Reptile(model, "regression", inner_steps=k, inner_lr=inner_lr, meta_lr=meta_lr, train_on=train_on)
    fit(learner, tasks, dict(max_steps=2))

    def training_points(task):
        if train_on == "support":
            return task.support_x, task.support_y
        return torch.cat([task.support_x, task.query_x]), torch.cat([task.support_y, task.query_y])

    # eps anneals linearly from meta_lr to 0 over the 2 meta-iterations: meta_lr, then meta_lr / 2.
    for eps, batch in ((meta_lr, tasks[:2]), (meta_lr / 2, tasks[2:])):
        targets = [inner_sgd(phi, *training_points(t), inner_lr, k) for t in batch]
        phi = phi + eps * torch.stack([w - phi for w in targets]).mean(dim=0)
    torch.testing.assert_close(learner.backbone.head.weight.detach().T, phi)


def inner_adam(w, x, y, lr, steps, betas, eps=1e-8):
    """Adam written out (Kingma & Ba 2015, algorithm 1), fresh moments, on the least-squares gradient."""
    a, b = quadratic_terms(x, y)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t in range(1, steps + 1):
        g = a @ w - b
        m, v = betas[0] * m + (1 - betas[0]) * g, betas[1] * v + (1 - betas[1]) * g * g
        w = w - lr * (m / (1 - betas[0] ** t)) / ((v / (1 - betas[1] ** t)).sqrt() + eps)
    return w


@pytest.mark.parametrize("betas", [(0.0, 0.999), (0.5, 0.9)])
def test_outer_update_with_the_adam_inner_loop_is_the_hand_written_one(betas):
    """Three meta-iterations of two tasks, each task's 4 Adam steps written out by hand (float64)."""
    torch.manual_seed(0)
    tasks = random_tasks(6, seed=3)
    model = TinyLinear(3).double()
    phi = model.head.weight.detach().T.clone()
    meta_lr, inner_lr, k = 0.9, 0.05, 4
    learner = Reptile(
        model,
        "regression",
        inner_steps=k,
        inner_lr=inner_lr,
        meta_lr=meta_lr,
        inner_optimizer="adam",
        adam_betas=list(betas),
    )
    fit(learner, tasks, dict(max_steps=3))

    for i, eps in enumerate((meta_lr, meta_lr * 2 / 3, meta_lr / 3)):  # linear annealing over 3 meta-iterations
        targets = [inner_adam(phi, t.support_x, t.support_y, inner_lr, k, betas) for t in tasks[2 * i : 2 * i + 2]]
        phi = phi + eps * torch.stack([w - phi for w in targets]).mean(dim=0)
    torch.testing.assert_close(learner.backbone.head.weight.detach().T, phi, rtol=1e-12, atol=1e-12)


def test_adam_rule_matches_torch_adam():
    task = random_tasks(1)[0]
    model = TinyLinear(3).double()
    reference = copy.deepcopy(model)
    learner = Reptile(model, "regression", inner_steps=4, inner_lr=0.1, inner_optimizer="adam", adam_betas=[0.5, 0.9])
    adapted = learner.adapt(task, steps=4, first_order=True)

    optimizer = torch.optim.Adam(reference.parameters(), lr=0.1, betas=(0.5, 0.9), eps=1e-8)
    for _ in range(4):
        optimizer.zero_grad()
        learner.loss_fn(reference(task.support_x), task.support_y).backward()
        optimizer.step()
    torch.testing.assert_close(adapted.head.weight, reference.head.weight)
    # a fresh rule per task: its moments do not leak from one task to the next
    assert learner.inner_rule() is not learner.inner_rule()
    rule = adam(0.1)
    assert rule("w", torch.zeros(1), torch.ones(1), 0).item() == pytest.approx(-0.1, rel=1e-6)


def test_resumed_run_continues_the_schedule_and_matches_an_uninterrupted_one(tmp_path):
    tasks = random_tasks(8, seed=4)

    def learner():
        torch.manual_seed(1)
        return Reptile(TinyLinear(3).double(), "regression", inner_steps=2, inner_lr=0.05, meta_lr=1.0, min_meta_lr=0.2)

    whole = learner()
    fit(whole, tasks, dict(max_epochs=2))  # 4 meta-iterations per epoch

    class StopAfterFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            trainer.should_stop = True

    interrupted = learner()
    trainer = fit(interrupted, tasks, dict(max_epochs=2, callbacks=[StopAfterFirstEpoch()]))
    assert trainer.global_step == 4
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = learner()
    trainer = fit(resumed, tasks, dict(max_epochs=2), ckpt_path=str(ckpt))
    assert trainer.global_step == 8
    # eps after 8 of 8 steps has reached min_meta_lr
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.2)
    torch.testing.assert_close(resumed.backbone.head.weight, whole.backbone.head.weight)


def test_bad_final_step_size_fails_naming_the_key(make_config):
    with pytest.raises(ConfigError, match="algo.min_meta_lr"):
        build(make_config(["algo=reptile", "algo.min_meta_lr=2.0"]))


def test_reptile_improves_adaptation_on_sinusoid(make_config, tmp_path):
    overrides = [
        *QUICK,
        "algo=reptile",
        "trainer.max_epochs=2",
        "data.batches_per_epoch=100",  # 200 meta-iterations
        "data.meta_batch_size=5",
        "data.val_episodes=20",
        "data.test_episodes=100",
    ]
    trained, untrained = trained_vs_untrained(make_config, tmp_path, overrides, "test/mse")
    print(
        f"reptile sinusoid test/mse after 10 steps: trained {trained['test/mse']:.3f}, untrained {untrained:.3f}, "
        f"trained before adaptation {trained['test/mse_step0']:.3f}"
    )
    assert trained["test/mse"] < 0.9 * untrained, (trained["test/mse"], untrained)
    assert trained["test/mse"] < trained["test/mse_step0"], "adapting the meta-learned init should help"


@needs_omniglot
def test_reptile_improves_adaptation_on_omniglot_5way_1shot(make_config, tmp_path):
    overrides = [
        *QUICK_OMNIGLOT,
        "algo=reptile",
        "algo.inner_lr=0.1",
        "algo.inner_steps=5",
        "algo.test_inner_steps=3",
    ]
    trained, untrained = trained_vs_untrained(make_config, tmp_path, overrides, "test/acc")
    print(f"reptile omniglot 5w1s test/acc: trained {trained['test/acc']:.3f}, untrained {untrained:.3f}")
    assert trained["test/acc"] > untrained + 0.05, (trained["test/acc"], untrained)
