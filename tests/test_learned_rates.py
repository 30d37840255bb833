"""One learned-rates component (metaplus.inner.learned_rates) behind MAML++'s LSLR, Meta-SGD and the
MT-net mask keys: checkpoint keys and parameter order as before it existed, and the update rules."""

import ast
from pathlib import Path

import torch

import metaplus.inner
from metaplus.algorithms import MAML, MetaSGD, MTNet
from metaplus.inner import LearnedRates, parameter_key
from metaplus.nn import Conv4


def conv4():
    torch.manual_seed(0)
    return Conv4(input_shape=[1, 16, 16], output_dim=3, filters=4)


def extra_keys(learner):
    """(Literal lists below: the keys of checkpoints written before the shared component, so old
    checkpoints load and the outer optimizer's parameter order, hence its saved state, is unchanged.)
    The learner's state-dict keys outside the backbone, in order (named_parameters gives the same)."""
    keys = [k for k in learner.state_dict() if not k.startswith("backbone.")]
    assert keys == [n for n, _ in learner.named_parameters() if not n.startswith("backbone.")]
    return keys


def test_lslr_keys_are_those_of_earlier_checkpoints():
    learner = MAML(conv4(), "classification", lslr=True, bnwb=True, bnrs=True, inner_steps=2)
    assert extra_keys(learner) == [
        "inner_lrs.blocks-0-conv-bias",
        "inner_lrs.blocks-0-conv-weight",
        "inner_lrs.blocks-1-conv-bias",
        "inner_lrs.blocks-1-conv-weight",
        "inner_lrs.blocks-2-conv-bias",
        "inner_lrs.blocks-2-conv-weight",
        "inner_lrs.blocks-3-conv-bias",
        "inner_lrs.blocks-3-conv-weight",
        "inner_lrs.head-bias",
        "inner_lrs.head-weight",
    ]
    assert learner.lr_names["blocks.0.conv.weight"] == "blocks-0-conv-weight"


def test_metasgd_keys_are_those_of_earlier_checkpoints():
    assert extra_keys(MetaSGD(conv4(), "classification")) == [
        f"inner_lrs.blocks__{i}__{layer}__{p}"
        for i in range(4)
        for layer in ("conv", "norm")
        for p in ("bias", "weight")
    ] + ["inner_lrs.head__bias", "inner_lrs.head__weight"]


def test_mtnet_mask_keys_are_those_of_earlier_checkpoints():
    assert extra_keys(MTNet(conv4(), "classification")) == [
        "mask_logits.blocks__0__conv",
        "mask_logits.blocks__1__conv",
        "mask_logits.blocks__2__conv",
        "mask_logits.blocks__3__conv",
        "mask_logits.head",
    ]
    assert extra_keys(MTNet(conv4(), "classification", share_M=False)) == [
        f"mask_logits.{layer}__layer__{p}"
        for layer in [f"blocks__{i}__conv" for i in range(4)] + ["head"]
        for p in ("bias", "weight")
    ]


def test_parameter_key():
    assert parameter_key("blocks.0.conv.weight") == "blocks__0__conv__weight"
    assert parameter_key("blocks.0.conv.weight", "-") == "blocks-0-conv-weight"


def test_per_step_rates_use_their_step_and_reuse_the_last():
    rates = LearnedRates.per_step_rates(["a.w"], steps=2, init=0.1, separator="-")
    with torch.no_grad():
        rates["a-w"].copy_(torch.tensor([0.5, 2.0]))
    rule, grad = rates.rule(), torch.ones(3)
    assert torch.equal(rule("a.w", None, grad, 0), -0.5 * grad)
    assert torch.equal(rule("a.w", None, grad, 1), -2.0 * grad)
    assert torch.equal(rule("a.w", None, grad, 4), -2.0 * grad)  # more test steps than trained: the last rate
    assert LearnedRates.per_step_rates(["b"], steps=0, init=0.5)["b"].tolist() == [0.5]  # at least one rate


def test_per_element_rates_multiply_elementwise_and_get_a_gradient():
    params = {"head.weight": torch.zeros(2, 3)}
    rates = LearnedRates.per_element_rates(params, init=0.1)
    assert list(rates) == ["head__weight"] and rates["head__weight"].shape == (2, 3)
    grad = torch.arange(6.0).reshape(2, 3)
    update = rates.rule()("head.weight", params["head.weight"], grad, 3)
    torch.testing.assert_close(update, -0.1 * grad)
    update.sum().backward()
    torch.testing.assert_close(rates["head__weight"].grad, -grad)


def test_inner_imports_no_algorithm():
    """inner/ stays algorithm-agnostic: the algorithms import it, never the other way round."""
    for path in Path(metaplus.inner.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        modules = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in modules if m.startswith("metaplus.algorithms")], path.name
