"""``adapted.score(x, y)`` names its fields and still unpacks as (loss, metric)."""

import torch

from metaplus.algorithms import MAML
from metaplus.nn.mlp import MLP


def test_score_is_a_named_tuple_that_unpacks():
    torch.manual_seed(0)
    learner = MAML(MLP(input_shape=[1], output_dim=1, hidden=[8]), "regression", inner_steps=1, test_inner_steps=2)
    x, y = torch.randn(10, 1), torch.randn(10, 1)
    score = learner.adapt_to(x[:5], y[:5]).score(x[5:], y[5:])
    assert score._fields == ("loss", "metric")
    loss, metric = score
    assert (loss, metric) == (score.loss, score.metric)
    assert score.metric == torch.nn.functional.mse_loss(learner.adapt_to(x[:5], y[:5])(x[5:]), y[5:]).item()
