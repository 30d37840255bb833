"""A MAML++ switch that cannot act in the run's setting says so at start, naming the switch and why."""

from metaplus.algorithms import MAML
from metaplus.nn.mlp import MLP


def test_msl_with_one_inner_step_is_named_as_changing_nothing():
    one_step = MAML(
        MLP(input_shape=[1], output_dim=1, hidden=[8]), "regression", inner_steps=1, msl=True, msl_epochs=10
    )
    [warning] = one_step.inert_switches(max_epochs=70)
    assert warning.startswith("algo.msl=true with algo.inner_steps=1") and "MSL changes nothing" in warning
    five_steps = MAML(
        MLP(input_shape=[1], output_dim=1, hidden=[8]), "regression", inner_steps=5, msl=True, msl_epochs=10
    )
    assert five_steps.inert_switches(max_epochs=70) == []


def test_da_on_a_first_order_learner_is_named_as_changing_nothing():
    first_order = MAML(
        MLP(input_shape=[1], output_dim=1, hidden=[8]), "regression", first_order=True, da=True, da_epochs=5
    )
    [warning] = first_order.inert_switches(max_epochs=70)
    assert warning.startswith("algo.da=true with algo.first_order=true") and "DA changes nothing" in warning
    second_order = MAML(MLP(input_shape=[1], output_dim=1, hidden=[8]), "regression", da=True, da_epochs=5)
    assert second_order.inert_switches(max_epochs=70) == []
