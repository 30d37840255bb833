"""metaplus.mamlpp_switches is the one list of MAML++'s switches: it must name exactly the learner's."""

from torch import nn

from metaplus.algorithms import MAML
from metaplus.mamlpp_switches import SWITCHES


def test_the_list_is_the_learners_switches_in_order():
    learner = MAML(nn.Linear(2, 1), "regression", **{name: True for name in SWITCHES})
    assert tuple(learner.switches) == SWITCHES
    assert all(learner.switches.values())
