"""algo.engine=batched (torch.func, vmap over tasks) against the learn2learn engine.

Both training paths of EpisodicLearner run on the same meta-batch from the same initialisation:
the per-task loop (``accumulate_task``, learn2learn clones) and the batched one
(``accumulate_batched``, one vmapped call per chunk). Their meta-gradients, for every parameter the
learner owns (initialisation, LSLR rates, Meta-SGD rates, per-step BN affine sets), must agree to
1e-5. Models run in float64 so the comparison sees the algorithms, not float32 rounding (the two
paths sum in different orders); a wrong per-task batch norm under vmap is off by ~3e-2.
"""

import pytest
import torch

from metaplus.algorithms import ANIL, MAML, MetaSGD, Reptile
from metaplus.config import ConfigError
from metaplus.data.episodes import TaskBatch
from metaplus.inner import BatchedAdapt, CloneAdapt, make_engine
from metaplus.nn import MLP
from metaplus.testing import QUICK
from metaplus.testing.engines import at_epoch, conv4, image_batch, meta_gradients, regression_batch

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def assert_engines_agree(make_learner, batch, epoch=0, chunk_sizes=(None,)):
    expected = meta_gradients(lambda engine: make_learner(engine, None), batch, "l2l", epoch)
    assert expected and all(g.abs().sum() > 0 for g in expected.values())
    for chunk in chunk_sizes:
        got = meta_gradients(lambda engine, chunk=chunk: make_learner(engine, chunk), batch, "batched", epoch)
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], **TOLERANCE, msg=f"{name}, chunk {chunk}")


CONV_CASES = {
    "maml_second_order": dict(),
    "fomaml": dict(first_order=True),
    "msl": dict(msl=True),
    "lslr": dict(lslr=True),
    "per_step_bn": dict(bnrs=True, bnwb=True),
    "mamlpp_all": dict(msl=True, lslr=True, bnrs=True, bnwb=True),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv4_meta_gradients_equal_learn2learn(case):
    switches = CONV_CASES[case]
    make = lambda engine, chunk: MAML(
        conv4(), "classification", inner_steps=2, inner_lr=0.1, engine=engine, chunk_size=chunk, **switches
    )
    assert_engines_agree(make, image_batch(), chunk_sizes=(None, 2) if case == "mamlpp_all" else (None,))


def test_msl_weights_reach_the_batched_engine():
    """At epoch 0 of MSL every step's query loss counts: the gradients differ from the last step only."""
    batch = image_batch()
    make = lambda msl: (
        lambda engine: MAML(conv4(), "classification", inner_steps=2, inner_lr=0.1, engine=engine, msl=msl)
    )
    with_msl = meta_gradients(make(True), batch, "batched")
    without = meta_gradients(make(False), batch, "batched")
    assert not torch.allclose(with_msl["backbone.head.weight"], without["backbone.head.weight"])


@pytest.mark.parametrize("backbone", ["conv4", "mlp"])
def test_anil_meta_gradients_equal_learn2learn(backbone):
    task_type, batch = ("classification", image_batch()) if backbone == "conv4" else ("regression", regression_batch())
    net = conv4 if backbone == "conv4" else (lambda: MLP(input_shape=[1], output_dim=1, hidden=[8, 8]))
    make = lambda engine, chunk: ANIL(net(), task_type, inner_steps=2, inner_lr=0.1, engine=engine, chunk_size=chunk)
    assert_engines_agree(make, batch)


@pytest.mark.parametrize("first_order", [False, True])
def test_metasgd_meta_gradients_equal_learn2learn(first_order):
    make = lambda engine, chunk: MetaSGD(
        MLP(input_shape=[1], output_dim=1, hidden=[8, 8]),
        "regression",
        inner_steps=2,
        inner_lr=0.05,
        first_order=first_order,
        engine=engine,
        chunk_size=chunk,
    )
    assert_engines_agree(make, regression_batch(), chunk_sizes=(None, 3))


def test_mlp_maml_second_order_equal_learn2learn():
    make = lambda engine, chunk: MAML(
        MLP(input_shape=[1], output_dim=1, hidden=[8, 8]),
        "regression",
        inner_steps=3,
        inner_lr=0.05,
        engine=engine,
        chunk_size=chunk,
    )
    assert_engines_agree(make, regression_batch(), chunk_sizes=(None, 1))


def test_chunks_cover_the_meta_batch_in_order():
    assert BatchedAdapt(3).chunks(8) == [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert BatchedAdapt().chunks(5) == [slice(0, 5)]


def test_engine_choices_fail_early_naming_the_key():
    assert isinstance(make_engine("l2l"), CloneAdapt) and not isinstance(make_engine("l2l"), BatchedAdapt)
    with pytest.raises(ConfigError, match="engine"):
        make_engine("vmap")
    with pytest.raises(ConfigError, match="chunk_size"):
        make_engine("l2l", 4)
    with pytest.raises(ConfigError, match="chunk_size"):
        make_engine("batched", 0)
    with pytest.raises(ConfigError, match="engine.*Reptile"):
        Reptile(MLP(), "regression", engine="batched")
    learner, b = MAML(conv4(), "classification", engine="batched", bn_stats="running"), image_batch()
    with pytest.raises(ConfigError, match="algo.engine.*bn_stats"):  # refused at the first training call
        learner.inner.query_losses(
            learner.backbone,
            b.support_x.float(),
            b.support_y,
            b.query_x.float(),
            b.query_y,
            loss_fn=learner.loss_fn,
            steps=1,
            adapted=learner.adapted_names(),
            rule=learner.inner_rule(),
            first_order=False,
        )


def test_batched_engine_trains_through_the_real_trainer(make_config, tmp_path):
    """algo.engine=batched from the command line: a real (tiny) run of MAML++ switches on Omniglot-
    free sinusoid MSL+LSLR trains and evaluates; the learner got the batched engine with chunks of 2."""
    from metaplus.run import build

    cfg = make_config([*QUICK, "algo.engine=batched", "algo.chunk_size=2", "algo.msl=true", "algo.lslr=true"])
    parts = build(cfg)
    assert isinstance(parts["learner"].inner, BatchedAdapt) and parts["learner"].inner.chunk_size == 2
    before = {n: p.detach().clone() for n, p in parts["learner"].named_parameters()}
    parts["trainer"].fit(parts["learner"], datamodule=parts["datamodule"])
    assert parts["trainer"].global_step == 3
    after = dict(parts["learner"].named_parameters())
    assert all(not torch.equal(before[n], after[n].detach()) for n in before), "every parameter was updated"


def test_batched_engine_trains_resnet12_with_dropblock_one_mask_per_task():
    """ResNet-12's DropBlock draws random masks: under vmap that raised torch's randomness error.
    Each task now draws its own masks (randomness="different"), as the default engine's
    one-task-at-a-time loop does: three copies of one task get three different losses, and the same
    three copies without DropBlock get one loss."""
    from metaplus.nn import ResNet12

    def losses(rate: float) -> torch.Tensor:
        torch.manual_seed(0)
        learner = at_epoch(
            MAML(
                ResNet12(
                    input_shape=[3, 16, 16], output_dim=3, widths=[2, 2, 4, 4], dropblock_rate=rate, dropblock_size=2
                ),
                "classification",
                inner_steps=1,
                engine="batched",
            ),
            0,
        )
        x = torch.randn(1, 6, 3, 16, 16).repeat(3, 1, 1, 1, 1)
        y = torch.arange(3).repeat_interleave(2).repeat(3, 1)
        loss, _ = learner.accumulate_batched(TaskBatch(x, y, x.clone(), y.clone(), torch.arange(3)))
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in learner.parameters())
        return torch.stack(loss)

    with_dropblock, without = losses(0.3), losses(0.0)
    assert len(set(with_dropblock.tolist())) == 3
    assert len(set(without.tolist())) == 1


EVAL_CASES = {
    "mamlpp_all": lambda engine, curve: MAML(
        conv4(),
        "classification",
        inner_steps=2,
        test_inner_steps=3,
        inner_lr=0.1,
        msl=True,
        lslr=True,
        bnrs=True,
        bnwb=True,
        engine=engine,
        chunk_size=2 if engine == "batched" else None,
        eval_curve=curve,
    ),
    "anil": lambda engine, curve: ANIL(
        conv4(), "classification", inner_steps=2, inner_lr=0.1, engine=engine, eval_curve=curve
    ),
    "metasgd_zero_steps": lambda engine, curve: MetaSGD(
        MLP(input_shape=[1], output_dim=1, hidden=[8, 8]),
        "regression",
        inner_steps=2,
        test_inner_steps=0,
        inner_lr=0.05,
        engine=engine,
        eval_curve=curve,
    ),
}


@pytest.mark.parametrize("curve", ["all", "none"])
@pytest.mark.parametrize("case", sorted(EVAL_CASES))
def test_batched_engine_evaluates_whole_batches_equal_to_one_task_at_a_time(case, curve, monkeypatch):
    """With algo.engine=batched validation and test adapt the tasks of a batch together (vmapped,
    in chunks); per-episode losses and metrics, with or without the per-step curve, equal the
    one-task-at-a-time evaluation's (which never runs: learn2learn's adapt is made to fail)."""
    batch = regression_batch() if case.startswith("metasgd") else image_batch(tasks=5)

    def evaluated(engine: str):
        torch.manual_seed(0)
        learner = EVAL_CASES[case](engine, curve).double().eval()
        learner.validation_step(batch, 0)
        # the first and last step of every episode, then the per-step curve of the curve's subset
        return (
            *learner.episode_curves["val"].compute(),
            *(learner.step_curves["val"].compute() if curve == "all" else ()),
        )

    expected = evaluated("l2l")

    def one_task_at_a_time(*args, **kwargs):
        raise AssertionError("the batched engine evaluated one task at a time")

    monkeypatch.setattr(CloneAdapt, "adapt", one_task_at_a_time)
    got = evaluated("batched")
    steps = EVAL_CASES[case]("l2l", curve).test_inner_steps
    assert expected[1].shape == (len(batch), 2)
    assert curve == "none" or expected[4].shape == (len(batch), steps + 1)
    for want, have in zip(expected, got):
        torch.testing.assert_close(have, want, **TOLERANCE)
