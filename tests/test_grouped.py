"""The grouped-convolution formulation of Conv-4 over T tasks (metaplus/inner/grouped.py, issue 26's
stretch) against running the Conv-4 once per task: forward outputs with per-task weights and the
second-order meta-gradients through the learner, in float64 to 1e-10 (the two compute the same sums;
only the convolutions' accumulation order may differ)."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from metaplus.algorithms import MAML
from metaplus.errors import ConfigError
from metaplus.inner.grouped import GroupedAdapt, grouped_conv4
from metaplus.nn import MLP, Conv4, configure_batchnorm
from metaplus.testing.engines import image_batch, meta_gradients

EXACT = dict(rtol=1e-10, atol=1e-10)
TASKS = 3

# Conv-4's real options: the activation (and with it the pool/activation order), the layout, the
# image size (at 32x32 channels_last auto is on), per-step BN affine sets.
OPTIONS = {
    "relu_nchw": dict(input_shape=[1, 16, 16], activation="relu", channels_last=False),
    "leaky_relu_channels_last": dict(input_shape=[3, 16, 16], activation="leaky_relu", channels_last=True),
    "relu_32px_auto_layout": dict(input_shape=[3, 32, 32], activation="relu", channels_last="auto"),
}


def conv4(options: dict) -> Conv4:
    torch.manual_seed(0)
    return Conv4(output_dim=3, filters=4, **options).double()


def per_task_values(model: Conv4, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    """TASKS different sets of values for every parameter (as after an inner step, tasks' weights differ)."""
    g = torch.Generator().manual_seed(seed)
    return [
        {n: p.detach() + 0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype) for n, p in model.named_parameters()}
        for _ in range(TASKS)
    ]


def run_per_task(model: Conv4, values: list[dict], x: torch.Tensor, step: int = 0) -> torch.Tensor:
    return torch.stack([functional_call(model, values[t], (x[t],), {"step": step}) for t in range(len(values))])


def stacked(values: list[dict]) -> dict[str, torch.Tensor]:
    return {n: torch.stack([v[n] for v in values]) for n in values[0]}


@pytest.mark.parametrize("case", sorted(OPTIONS))
def test_forward_equals_the_conv4_run_once_per_task(case):
    model = conv4(OPTIONS[case])
    assert model.channels_last == (case != "relu_nchw")
    x = image_batch(tasks=TASKS, ways=3, shots=2, shape=model.input_shape).support_x
    values = per_task_values(model)
    expected = run_per_task(model, values, x)
    got = grouped_conv4(model, stacked(values), x)
    assert got.shape == expected.shape == (TASKS, 6, 3)
    torch.testing.assert_close(got, expected, **EXACT)
    # the tasks really differ: a grouped call that mixed them up could not match all three
    assert not torch.allclose(expected[0], expected[1])


def test_forward_with_per_step_affine_sets_and_evaluation_with_running_statistics():
    model = conv4(OPTIONS["leaky_relu_channels_last"])
    configure_batchnorm(model, steps=3, per_step_stats=True, per_step_affine=True, stats="running")
    model.double()  # the new sets and buffers are made in float32
    for layer in model.modules():  # running statistics of their own, so evaluation reads real values
        if hasattr(layer, "running_mean") and layer.running_mean is not None:
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
    x = image_batch(tasks=TASKS, ways=3, shots=2, shape=model.input_shape).support_x
    values = per_task_values(model, seed=2)
    model.eval()
    for step in (0, 2, 5):  # 5: clamped to the last set
        torch.testing.assert_close(
            grouped_conv4(model, stacked(values), x, step), run_per_task(model, values, x, step), **EXACT
        )


MAML_CASES = {
    "maml_one_step": dict(inner_steps=1),
    "fomaml_one_step": dict(inner_steps=1, first_order=True),
    "mamlpp_switches_two_steps": dict(inner_steps=2, msl=True, lslr=True, bnrs=True, bnwb=True),
}


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("case", sorted(MAML_CASES))
def test_meta_gradients_equal_the_default_engine(case, options):
    def make(engine):
        learner = MAML(conv4(OPTIONS[options]).float(), "classification", inner_lr=0.1, **MAML_CASES[case])
        if engine == "batched":  # meta_gradients' accumulate_batched path, here with the grouped engine
            learner.inner = GroupedAdapt()
        return learner

    batch = image_batch(tasks=TASKS, ways=3, shots=2, queries=2, shape=tuple(OPTIONS[options]["input_shape"]))
    expected = meta_gradients(make, batch, "l2l")
    got = meta_gradients(make, batch, "batched")
    assert got.keys() == expected.keys() and all(g.abs().sum() > 0 for g in expected.values())
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], **EXACT, msg=name)


def test_evaluation_equals_the_default_engine_per_episode():
    """``evaluate_batched`` (under no_grad, first order, a curve over every step) through the grouped
    engine gives each episode's losses and metrics of ``evaluate_task``."""
    learner = MAML(conv4(OPTIONS["relu_nchw"]), "classification", inner_steps=2, inner_lr=0.1, msl=True, lslr=True)
    batch = image_batch(tasks=TASKS)
    expected = [learner.evaluate_task(batch[t], 2, per_step=True) for t in range(TASKS)]
    learner.inner = GroupedAdapt(chunk_size=2)
    losses, metrics = learner.evaluate_batched(batch, 2, per_step=True)
    torch.testing.assert_close(losses, torch.stack([e[0] for e in expected]), **EXACT)
    torch.testing.assert_close(metrics, torch.stack([e[1] for e in expected]), **EXACT)


def test_a_backbone_other_than_conv4_is_refused_naming_it():
    learner = MAML(MLP(input_shape=[1], output_dim=1, hidden=[4]), "regression", inner_steps=1)
    x = torch.randn(2, 3, 1)
    with pytest.raises(ConfigError, match="grouped is invalid with the MLP backbone.*Conv4"):
        GroupedAdapt().query_losses(
            learner.backbone,
            x,
            x,
            x,
            x,
            loss_fn=learner.loss_fn,
            steps=1,
            adapted=learner.adapted_names(),
            rule=learner.inner_rule(),
            first_order=False,
        )


# -- algo.engine=grouped: a choice of the config ----------------------------------------------------
def test_the_engine_is_chosen_by_name_and_refuses_another_backbone_when_the_learner_is_built():
    from metaplus.inner import make_engine

    assert type(make_engine("grouped", chunk_size=4)) is GroupedAdapt
    with pytest.raises(ConfigError, match="engine.*grouped is invalid with the MLP backbone"):
        MAML(MLP(input_shape=[1], output_dim=1, hidden=[4]), "regression", engine="grouped")


def test_a_run_trains_with_it_and_equals_the_default_engine(make_config, tmp_path):
    """``algo.engine=grouped`` through train.py's composition (Omniglot, Conv-4, MAML++ switches): the
    same losses as the default engine, step by step (float32: to rounding)."""
    from metaplus.run import run
    from metaplus.testing import QUICK_OMNIGLOT, shared_data_dir, train_losses

    if shared_data_dir() is None:
        pytest.skip("needs the shared Omniglot (METAPLUS_DATA or ../shared/data)")
    common = [
        *QUICK_OMNIGLOT,
        "algo=mamlpp",
        "model.filters=8",
        "data.batches_per_epoch=3",
        "trainer.max_epochs=1",
        "data.val_episodes=4",
        "data.test_episodes=4",
        "ensemble_top_k=0",
        "logger=csv",
    ]
    results = {}
    for engine in ("l2l", "grouped"):
        run(make_config([*common, f"algo.engine={engine}"], tmp_path / engine))
        results[engine] = train_losses(tmp_path / engine)
    assert len(results["grouped"]) == 3
    for step, loss in results["l2l"].items():
        assert results["grouped"][step] == pytest.approx(loss, rel=1e-4), step
