"""Linear CKA on cases whose value is known, and per-layer similarity before/after adaptation."""

import copy

import pytest
import torch

from metaplus.algorithms import ANIL, MAML
from metaplus.analysis import adaptation_similarity, default_layers, linear_cka, representation_similarity
from metaplus.data.episodes import Task
from metaplus.nn import MLP


def test_identical_representations_have_cka_one():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)


def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scale():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    assert linear_cka(x, 3.0 * (x.double() @ q)) == pytest.approx(1.0, abs=1e-10)
    # a non-isotropic scaling is not a rotation: CKA drops below 1
    assert linear_cka(x, x * torch.tensor([10.0, 1, 1, 1, 1, 1])) < 0.9


def test_hand_computed_values_on_tiny_examples():
    x = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    # centred x = (-1.5, -0.5, 0.5, 1.5); centred y = (-1.5, 0.5, -0.5, 1.5): (x.y)^2 / (|x|^2 |y|^2) = 4^2 / 5^2
    assert linear_cka(x, torch.tensor([[1.0], [3.0], [2.0], [4.0]])) == pytest.approx(16 / 25, abs=1e-12)
    # y = (1, -1, -1, 1) is orthogonal to centred x: CKA exactly 0
    assert linear_cka(x, torch.tensor([[1.0], [-1.0], [-1.0], [1.0]])) == pytest.approx(0.0, abs=1e-12)
    # two features. Centred columns: x = (-1.5, -0.5, 0.5, 1.5), (1, -1, 1, -1); y = (-1.5, -0.5, 0.5, 1.5),
    # (-1, -1, 1, 1). X^T Y = [[5, 4], [-2, 0]] -> 45; X^T X = [[5, -2], [-2, 4]] -> sqrt(49) = 7;
    # Y^T Y = [[5, 4], [4, 4]] -> sqrt(73). CKA = 45 / (7 sqrt(73)).
    x2 = torch.tensor([[1.0, 1.0], [2.0, -1.0], [3.0, 1.0], [4.0, -1.0]])
    y2 = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 2.0], [4.0, 2.0]])
    assert linear_cka(x2, y2) == pytest.approx(45 / (7 * 73**0.5), abs=1e-12)


def test_independent_random_features_are_near_zero():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(4000, 4, generator=g), torch.randn(4000, 4, generator=g)
    assert linear_cka(x, y) < 0.01  # expectation ~ sqrt(p q) / n = 0.001


def test_cka_rejects_mismatched_or_constant_inputs():
    with pytest.raises(ValueError, match="same examples"):
        linear_cka(torch.randn(5, 2), torch.randn(4, 2))
    with pytest.raises(ValueError, match="constant"):
        linear_cka(torch.ones(5, 2), torch.randn(5, 2))


def sinusoid_task(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = 10 * torch.rand(30, 1, generator=g) - 5
    return Task(x[:10], 3 * torch.sin(x[:10]), x[10:], 3 * torch.sin(x[10:]))


def test_anil_changes_only_the_head_and_maml_changes_the_body_too():
    torch.manual_seed(0)
    backbone = MLP()
    assert default_layers(backbone) == ["body.0", "body.2", "head"]
    same = representation_similarity(backbone, copy.deepcopy(backbone), sinusoid_task().query_x)
    assert all(v == pytest.approx(1.0, abs=1e-10) for v in same.values())

    anil = ANIL(copy.deepcopy(backbone), "regression", inner_steps=5, inner_lr=0.05)
    cka = adaptation_similarity(anil, sinusoid_task(), steps=5)
    assert cka["body.0"] == cka["body.2"] == pytest.approx(1.0, abs=1e-10), "ANIL's body is not adapted"
    assert cka["head"] < 0.999
    maml = MAML(copy.deepcopy(backbone), "regression", inner_steps=5, inner_lr=0.05)
    cka = adaptation_similarity(maml, sinusoid_task(), steps=5, layers=["body.2", "head"])
    # (body.0 maps a scalar input affinely: its centred outputs stay proportional, CKA 1 for any weights)
    assert list(cka) == ["body.2", "head"] and cka["body.2"] < 1 - 1e-6
