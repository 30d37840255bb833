"""bench/parity.py's two MAML comparisons (issue 25): learn2learn's example (``maml_miniimagenet_l2l``)
and dragen1860/MAML-Pytorch (``maml_omniglot_dragen``), with metaplus's StridedConv4 backbone. Tiny
fake references stand in for the real ones (the settings are read from their files, so a fake with
other defaults must be refused); nothing here trains: docs/parity.md's smoke runs prove the drivers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaplus.benchmarking import parity, reference_dragen, reference_l2l
from metaplus.compose import compose_config
from metaplus.config import ConfigError
from metaplus.data.episodes import Task
from metaplus.nn.strided_conv4 import StridedConv4


# -- the backbone -------------------------------------------------------------------------------------------
def test_strided_conv4_is_the_references_network():
    """3x3 stride-2 unpadded convs, the last 2x2 stride 1, each conv -> ReLU -> BN (batch statistics), no
    pooling: 28x28 ends at 1x1, 64 features into the head; the forward is that composition."""
    torch.manual_seed(0)
    net = StridedConv4(input_shape=[1, 28, 28], output_dim=5, filters=8)
    assert net.head.in_features == 8 and net.head.out_features == 5
    convs = [b.conv for b in net.blocks]
    assert [(c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [(3, 2, 0)] * 3 + [(2, 1, 0)]
    x = torch.randn(6, 1, 28, 28)
    y = x
    for block in net.blocks:
        y = F.relu(F.conv2d(y, block.conv.weight, block.conv.bias, stride=block.conv.stride))
        y = F.batch_norm(y, None, None, block.norm.weight, block.norm.bias, training=True)
    assert torch.allclose(net(x), F.linear(y.flatten(1), net.head.weight, net.head.bias), atol=1e-6)


def test_strided_conv4_starts_as_the_reference_kaiming_normal_zero_bias():
    torch.manual_seed(0)
    net = StridedConv4(input_shape=[1, 28, 28], output_dim=5, filters=64)
    w = net.blocks[1].conv.weight.detach()  # fan_in 64 * 9: std sqrt(2 / 576)
    assert float(w.std()) == pytest.approx((2 / 576) ** 0.5, rel=0.05)
    with torch.no_grad():
        assert all(float(b.conv.bias.abs().max()) == 0 for b in net.blocks) and float(net.head.bias.abs().max()) == 0


def test_strided_conv4_refuses_inputs_too_small_and_unknown_init():
    with pytest.raises(ConfigError, match="input_shape"):
        StridedConv4(input_shape=[1, 8, 8])
    with pytest.raises(ConfigError, match="init"):
        StridedConv4(init="orthogonal")


def test_model_strided_conv4_composes_with_omniglot():
    from metaplus.nn.init_from import build_backbone

    cfg = compose_config(["algo=maml", "data=omniglot", "model=strided_conv4"])
    backbone = build_backbone(cfg.model)
    assert isinstance(backbone, StridedConv4) and backbone.head.in_features == 64


# -- learn2learn's example ------------------------------------------------------------------------------------
FAKE_EXAMPLE = """
import numpy as np
import torch

def fast_adapt(batch, learner, loss, adaptation_steps, shots, ways, device):
    data, labels = batch
    adaptation_indices = np.zeros(data.size(0), dtype=bool)
    adaptation_indices[np.arange(shots*ways) * 2] = True
    evaluation_indices = torch.from_numpy(~adaptation_indices)
    return data[torch.from_numpy(adaptation_indices)], labels[evaluation_indices]

def main(ways=5, shots=5, meta_lr=0.003, fast_lr={fast_lr}, meta_batch_size=32, adaptation_steps=1,
         num_iterations=60000, cuda=True, seed=42):
    raise SystemExit("main() must not run")
"""


def fake_example(root: Path, fast_lr: float = 0.5) -> Path:
    path = root / reference_l2l.EXAMPLE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_EXAMPLE.replace("{fast_lr}", str(fast_lr)))
    return root


def task(ways=3, shots=2, queries=2) -> Task:
    support_y = torch.tensor([2, 0, 1, 0, 2, 1][: ways * shots])
    query_y = torch.tensor([1, 2, 0, 0, 1, 2][: ways * queries])
    # every image holds 10 * label + its position, so where it went can be read back
    support_x = (10 * support_y + torch.arange(len(support_y))).float().view(-1, 1, 1, 1)
    query_x = (100 + 10 * query_y + torch.arange(len(query_y))).float().view(-1, 1, 1, 1)
    return Task(support_x=support_x, support_y=support_y, query_x=query_x, query_y=query_y)


def test_example_batch_puts_support_at_even_and_query_at_odd_positions(tmp_path):
    """fast_adapt (the example's own, here its splitting lines) adapts on the even positions: they must be
    the support set, the odd ones the query set, each example with its own label."""
    example = reference_l2l.load_example(fake_example(tmp_path))
    data, labels = reference_l2l.example_batch(task())
    adaptation_data, evaluation_labels = example.fast_adapt((data, labels), None, None, 1, 2, 3, "cpu")
    assert sorted(adaptation_data.flatten().tolist()) == sorted(task().support_x.flatten().tolist())
    assert evaluation_labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert (data.flatten() % 100 // 10).long().tolist() == labels.tolist()  # images keep their labels
    assert labels.dtype == torch.long


def test_example_batch_refuses_queries_other_than_shots():
    with pytest.raises(ValueError, match="queries per class must equal shots"):
        reference_l2l.example_batch(task(queries=1))


def l2l_settings(code: Path, meta_batch=None):
    comparison = parity.COMPARISONS["maml_miniimagenet_l2l"]
    overrides = [*comparison.pair, *parity.driver_overrides(comparison)]
    if meta_batch:
        overrides.append(f"data.meta_batch_size={meta_batch}")
    return comparison, parity.settings_table(comparison, compose_config(overrides), code, meta_batch)


def test_l2l_settings_are_read_from_the_example_and_match_metaplus(tmp_path):
    comparison, table = l2l_settings(fake_example(tmp_path), meta_batch=4)
    assert all(row["same"] for row in table), [r for r in table if not r["same"]]
    assert {r["setting"]: r["reference"] for r in table}["meta-batch"] == "main(meta_batch_size) (--meta-batch) = 4"
    parity.check_settings(table, comparison)


def test_an_example_with_other_defaults_is_refused_naming_the_setting(tmp_path):
    comparison, table = l2l_settings(fake_example(tmp_path, fast_lr=0.1))
    with pytest.raises(SystemExit, match="inner lr: reference main\\(fast_lr\\) = 0.1, metaplus algo.inner_lr = 0.5"):
        parity.check_settings(table, comparison)


# -- dragen1860/MAML-Pytorch -------------------------------------------------------------------------------------
FAKE_TRAIN = """
import argparse

def main(args):
    config = [
        ('conv2d', [64, 1, 3, 3, 2, 0]), ('relu', [True]), ('bn', [64]),
        ('conv2d', [64, 64, 3, 3, 2, 0]), ('relu', [True]), ('bn', [64]),
        ('conv2d', [64, 64, 3, 3, 2, 0]), ('relu', [True]), ('bn', [64]),
        ('conv2d', [64, 64, 2, 2, 1, 0]), ('relu', [True]), ('bn', [64]),
        ('flatten', []),
        ('linear', [args.n_way, 64])
    ]

if __name__ == '__main__':
    argparser = argparse.ArgumentParser()
    argparser.add_argument('--epoch', type=int, default=40000)
    argparser.add_argument('--n_way', type=int, default=5)
    argparser.add_argument('--k_spt', type=int, default=1)
    argparser.add_argument('--k_qry', type=int, default=15)
    argparser.add_argument('--imgsz', type=int, default=28)
    argparser.add_argument('--imgc', type=int, default=1)
    argparser.add_argument('--task_num', type=int, default=32)
    argparser.add_argument('--meta_lr', type=float, default=1e-3)
    argparser.add_argument('--update_lr', type=float, default={update_lr})
    argparser.add_argument('--update_step', type=int, default=5)
    argparser.add_argument('--update_step_test', type=int, default=10)
    main(argparser.parse_args())
"""


def fake_dragen(root: Path, update_lr: float = 0.4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / reference_dragen.SCRIPT).write_text(FAKE_TRAIN.replace("{update_lr}", str(update_lr)))
    return root


def dragen_settings(code: Path):
    comparison = parity.COMPARISONS["maml_omniglot_dragen"]
    cfg = compose_config([*comparison.pair, *parity.driver_overrides(comparison)])
    return comparison, parity.settings_table(comparison, cfg, code)


def test_dragen_settings_and_network_are_read_from_its_script_and_match_metaplus(tmp_path):
    code = fake_dragen(tmp_path / "dragen")
    args = reference_dragen.reference_args(code)
    assert (args.update_lr, args.k_qry, args.task_num, args.update_step_test) == (0.4, 15, 32, 10)
    assert reference_dragen.network_config(code, args)[-1] == ("linear", [5, 64])
    comparison, table = dragen_settings(code)
    assert all(row["same"] for row in table), [r for r in table if not r["same"]]
    rows = {r["setting"]: r for r in table}
    assert "(64, 2, 1, 0)" in rows["convolutions (channels, kernel, stride, padding)"]["metaplus"]


def test_a_dragen_script_with_other_defaults_is_refused(tmp_path):
    comparison, table = dragen_settings(fake_dragen(tmp_path / "dragen", update_lr=0.1))
    with pytest.raises(SystemExit, match="inner lr: reference update_lr = 0.1"):
        parity.check_settings(table, comparison)


def test_omniglot_npy_holds_metaplus_pixels_in_its_layout_and_names_the_split(tmp_path, monkeypatch):
    """OmniglotNShot's [characters, 20, 1, 28, 28] floats, each character's drawings in metaplus's order and
    pixels (x / 255 of the decoded, inverted image); the first TRAIN_CHARACTERS train."""
    pixels = torch.randint(0, 256, (3, 20, 1, 28, 28), dtype=torch.uint8)
    names = ["A/character01", "A/character02", "B/character01"]
    monkeypatch.setattr(reference_dragen, "omniglot_characters", lambda root, cache: (names, pixels))
    monkeypatch.setattr(reference_dragen, "TRAIN_CHARACTERS", 2)
    split = reference_dragen.write_omniglot_npy(tmp_path, None, tmp_path / "npy")
    stored = np.load(tmp_path / "npy" / "omniglot.npy")
    assert stored.shape == (3, 20, 1, 28, 28) and stored.dtype == np.float32
    assert np.allclose(stored, pixels.numpy() / 255.0)
    assert split == {"train": names[:2], "val": names[2:], "test": names[2:]}
    assert not list((tmp_path / "npy").glob("*.tmp*"))


FAKE_NSHOT = """
import numpy as np

class OmniglotNShot:
    # the reference's caching: 10 meta-batches drawn at once with numpy, refilled when used up
    def __init__(self, root, batchsz, n_way, k_shot, k_query, imgsz):
        self.datasets = {"train": np.arange(50), "test": np.arange(10)}
        self.indexes = {"train": 0, "test": 0}
        self.datasets_cache = {"train": self.load_data_cache(self.datasets["train"]),
                               "test": self.load_data_cache(self.datasets["test"])}

    def load_data_cache(self, data_pack):
        return [[np.random.choice(data_pack, (2, 3)).astype(np.float32)] * 4 for _ in range(10)]

    def next(self, mode='train'):
        if self.indexes[mode] >= len(self.datasets_cache[mode]):
            self.indexes[mode] = 0
            self.datasets_cache[mode] = self.load_data_cache(self.datasets[mode])
        batch = self.datasets_cache[mode][self.indexes[mode]]
        self.indexes[mode] += 1
        return batch
"""
FAKE_META = """
import torch

class Meta(torch.nn.Module):
    def __init__(self, args, config):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.meta_optim = torch.optim.Adam([self.w], lr=args.meta_lr)
"""


@pytest.mark.parametrize("stop", [10, 13])  # at a refill of its cache, and inside one
def test_a_resumed_dragen_reference_draws_the_episodes_it_would_have_drawn(tmp_path, monkeypatch, request, stop):
    code = fake_dragen(tmp_path / "dragen")
    (code / "omniglotNShot.py").write_text(FAKE_NSHOT)
    (code / "meta.py").write_text(FAKE_META)
    monkeypatch.syspath_prepend(str(code))  # what reference_dragen.load does in the child (fakes, so no more)

    def forget_fakes():
        for name in ("meta", "omniglotNShot"):
            sys.modules.pop(name, None)

    forget_fakes()
    request.addfinalizer(forget_fakes)
    spec = {"seed": 3, "data_root": str(tmp_path / "data" / "omniglot")}

    def draws(driver, start, stop):
        return [driver.batch(t)[0].tolist() for t in range(start, stop)]

    straight = reference_dragen.DragenDriver(code, spec, None, None)
    expected = draws(straight, 0, 25)
    first = reference_dragen.DragenDriver(code, spec, None, None)
    assert draws(first, 0, stop) == expected[:stop]
    state = first.state()
    torch.save(state, tmp_path / "latest.pt")  # as the harness stores it (torch.load's safe types only)
    np.random.seed(12345)  # a new process: another generator state
    resumed = reference_dragen.DragenDriver(code, spec, None, None)
    resumed.load(torch.load(tmp_path / "latest.pt"))
    assert draws(resumed, stop, 25) == expected[stop:]


# -- the command line -----------------------------------------------------------------------------------------
def test_meta_batch_is_refused_for_a_mamlpp_comparison(tmp_path, monkeypatch):
    code = tmp_path / "mamlpp"
    code.mkdir()
    (code / "few_shot_learning_system.py").write_text("")
    with pytest.raises(SystemExit) as refused:
        parity.main(
            [
                "--comparison",
                "mamlpp_omniglot_5w1s",
                "--reference",
                str(code),
                "--meta-batch",
                "4",
                "--out",
                str(tmp_path / "runs"),
            ]
        )
    assert "--meta-batch changes only maml_miniimagenet_l2l, maml_omniglot_dragen" in str(refused.value.code)
    assert not (tmp_path / "runs").exists()


def test_missing_dragen_reference_fails_early_with_the_clone_command(tmp_path, monkeypatch):
    monkeypatch.delenv("METAPLUS_DRAGEN_MAML_REFERENCE", raising=False)
    with pytest.raises(SystemExit) as missing:
        parity.main(["--comparison", "maml_omniglot_dragen", "--out", str(tmp_path / "runs")])
    assert "git clone https://github.com/dragen1860/MAML-Pytorch" in str(missing.value.code)
    assert "METAPLUS_DRAGEN_MAML_REFERENCE" in str(missing.value.code)
    assert not (tmp_path / "runs").exists()


def test_the_regenerate_command_states_the_meta_batch():
    args = parity.parse_args(["--comparison", "maml_miniimagenet_l2l", "--meta-batch", "4", "--iterations", "1000"])
    command = parity.regenerate_command(parity.COMPARISONS["maml_miniimagenet_l2l"], args)
    assert "--meta-batch 4 " in command and "--iterations 1000" in command
    arguments = command.split("python bench/parity.py ")[1].split(" --out ")[0].split()  # "<runs dir>" aside
    assert parity.parse_args(arguments).meta_batch == 4


def test_every_comparison_has_a_driver_and_its_differences():
    for comparison in parity.COMPARISONS.values():
        assert comparison.driver in ("mamlpp", "l2l", "dragen")
        assert parity.KNOWN_DIFFERENCES[comparison.driver]
    assert json.dumps(parity.pending_record(parity.COMPARISONS["maml_omniglot_dragen"]))


def test_every_metaplus_conv4_parameter_has_its_twin_in_the_examples_model():
    """The same-weights check copies metaplus's Conv-4 (the l2l comparison's settings) into the example's
    MiniImagenetCNN: every parameter must map onto one of the same shape, and all of them be covered."""
    import learn2learn as l2l

    from metaplus.nn.init_from import build_backbone

    comparison = parity.COMPARISONS["maml_miniimagenet_l2l"]
    cfg = compose_config([*comparison.pair, *parity.driver_overrides(comparison)])
    ours = {f"backbone.{n}": p.shape for n, p in build_backbone(cfg.model).named_parameters()}
    theirs = {n: p.shape for n, p in l2l.vision.models.MiniImagenetCNN(5).named_parameters()}
    mapped = {reference_l2l.reference_parameter(n): shape for n, shape in ours.items()}
    assert mapped == theirs
    with pytest.raises(KeyError, match="backbone.blocks.0.other"):
        reference_l2l.reference_parameter("backbone.blocks.0.other")


def test_gradients_that_are_zero_by_construction_are_compared_with_the_largest():
    gradients = parity.compare_gradients(
        [
            ("w", torch.tensor([1.0, -2.0]), torch.tensor([1.0, -2.1])),
            ("bias", torch.tensor([1e-9]), torch.tensor([-1e-9])),  # rounding noise around an exact zero
        ]
    )
    assert gradients["w"]["relative_difference"] == pytest.approx(0.1 / 2.1)
    assert gradients["bias"]["zero_by_construction"]
    assert gradients["bias"]["relative_difference"] == pytest.approx(2e-9 / 2.1)


def test_every_strided_conv4_parameter_has_its_place_in_the_references_vars(tmp_path):
    """The same-weights check copies StridedConv4 into the reference's Learner.vars, whose order and
    shapes follow its config (conv weight and bias, BN weight and bias per block, then the linear layer)."""
    from metaplus.nn.init_from import build_backbone

    code = fake_dragen(tmp_path / "dragen")
    config = reference_dragen.network_config(code, reference_dragen.reference_args(code))
    shapes = []
    for name, p in config:
        if name == "conv2d":
            shapes += [tuple(p[:4]), (p[0],)]
        elif name == "bn":
            shapes += [(p[0],), (p[0],)]
        elif name == "linear":
            shapes += [tuple(p), (p[0],)]
    comparison = parity.COMPARISONS["maml_omniglot_dragen"]
    cfg = compose_config([*comparison.pair, *parity.driver_overrides(comparison)])
    ours = {f"backbone.{n}": tuple(p.shape) for n, p in build_backbone(cfg.model).named_parameters()}
    placed = {reference_dragen.reference_index(n): shape for n, shape in ours.items()}
    assert sorted(placed) == list(range(len(shapes))) and [placed[i] for i in range(len(shapes))] == shapes
