"""FLOP counting and utilisation (metaplus.benchmarking.flops): the counts against hand-derived ones."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from metaplus.algorithms import MAML
from metaplus.benchmarking.flops import count_flops, matmul_peak_gflops, utilisation
from metaplus.testing import engines as engine_tests


def conv_linear_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 5))


def test_forward_backward_count_of_a_conv_linear_network_is_the_analytic_count():
    net, x = conv_linear_net(), torch.randn(4, 3, 6, 6)
    conv = 2 * 4 * 8 * 6 * 6 * 3 * 3 * 3  # 2 x batch x out-channels x out-pixels x in-channels x kernel
    linear = 2 * 4 * (8 * 6 * 6) * 5  # 2 x batch x in x out
    assert count_flops(net, x) == conv + linear
    # Backward: the conv's weight gradient only (its input needs none), the linear's weight and input
    # gradients: each one forward's worth.
    assert count_flops(lambda: net(x).sum().backward()) == (conv + linear) + conv + 2 * linear


def test_second_order_maml_counts_the_double_backward():
    """The meta-gradient through the inner gradients (create_graph) costs convolutions first order does not."""
    batch = engine_tests.image_batch(tasks=1)
    counts = {}
    for first_order in (False, True):
        learner = engine_tests.at_epoch(
            MAML(engine_tests.conv4(), "classification", inner_steps=2, inner_lr=0.1, first_order=first_order).double(),
            0,
        )
        counts[first_order] = count_flops(learner.accumulate_task, batch[0], 1.0)
    assert counts[False] > 1.3 * counts[True] > 0


def test_utilisation_is_achieved_over_peak():
    assert utilisation(3e9, 0.5, 12.0) == pytest.approx({"gflops_per_s": 6.0, "utilisation": 0.5})
    with pytest.raises(ValueError, match="seconds"):
        utilisation(3e9, 0.0, 12.0)
    with pytest.raises(ValueError, match="peak_gflops"):
        utilisation(3e9, 1.0, 0.0)


def test_matmul_peak_is_a_positive_rate_and_rejects_bad_sizes():
    assert 0 < matmul_peak_gflops(size=32, repeats=2) < float("inf")
    with pytest.raises(ValueError, match="size"):
        matmul_peak_gflops(size=0)


def load_speed_script():
    import importlib.util

    from metaplus.testing import REPO

    spec = importlib.util.spec_from_file_location("bench_speed", REPO / "bench" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_speed_rows_carry_utilisation_and_the_table_shows_it():
    from metaplus.benchmarking.flops import utilisation_fields

    speed = load_speed_script()
    fields = utilisation_fields(flops=46_000_000_000, s_it=2.0, peak_gflops=46.0)
    assert fields == {"gflop_per_iteration": 46.0, "gflops_per_s": 23.0, "peak_gflops": 46.0, "utilisation": 0.5}
    per_cpu_second = utilisation_fields(46_000_000_000, 2.0, 46.0, cpu_it=1.0, cpu_peak_gflops=92.0)
    assert per_cpu_second["cpu_utilisation"] == 0.5 and per_cpu_second["cpu_gflops_per_s"] == 46.0
    row = dict(
        setting="s", engine="l2l", s_per_iteration=2.0, meta_floor_s=1.0, ratio_to_meta_floor=2.0,
        cpu_ratio_to_meta_floor=2.0, floor_s=1.0, ratio_to_floor=2.0, cpu_ratio_to_floor=2.0, peak_rss_gb=1.0,
        eval_fraction=0.1,
    )  # fmt: skip
    table = speed.markdown([{**row, **fields}, row, {**row, **per_cpu_second}], {}, "note").splitlines()
    assert table[2].endswith("| 46.00 | 23.0 | 46.0 | 50.0% | n/a |")
    assert table[3].endswith("| n/a | n/a | n/a | n/a | n/a |")  # a row saved before the count
    assert table[4].endswith("| 46.00 | 23.0 | 46.0 | 50.0% | 50.0% |")
    assert len({line.count("|") for line in table[:5]}) == 1  # every line has the header's columns


def test_vmap_counts_more_flops_than_the_loop_for_the_same_weight_gradient():
    """Why speed.py's batched rows take the default engine's count as their work: the batching rule of
    the convolution backward computes more than the per-task loop does."""
    import torch.nn.functional as F
    from torch.func import grad, vmap

    x, w = torch.randn(4, 5, 3, 12, 12), torch.randn(4, 8, 3, 3, 3)

    def loss(x, w):
        return F.conv2d(x, w, padding=1).sum()

    loop = count_flops(lambda: [grad(loss, argnums=1)(x[i], w[i]) for i in range(4)])
    batched = count_flops(lambda: vmap(grad(loss, argnums=1))(x, w))
    assert batched > loop


def test_rows_of_engines_with_the_default_meta_gradient_take_its_flop_count():
    from metaplus.benchmarking.flops import useful_flops, utilisation_fields

    def row(engine, gflop, s_it):
        return {"setting": "s", "engine": engine, "s_per_iteration": s_it, "cpu_s_per_iteration": s_it,
                **utilisation_fields(int(gflop * 1e9), s_it, 80.0, s_it, 80.0)}  # fmt: skip

    rows = useful_flops([row("l2l", 40.0, 1.0), row("batched", 100.0, 2.0), row("l2l_first_order", 20.0, 0.5)])
    l2l, batched, first_order = rows
    assert batched["gflop_per_iteration"] == 40.0 and batched["gflop_counted"] == 100.0
    assert batched["utilisation"] == pytest.approx(40.0 / 2.0 / 80.0, abs=1e-3) == batched["cpu_utilisation"]
    assert first_order == row("l2l_first_order", 20.0, 0.5) and l2l == row("l2l", 40.0, 1.0)
    assert useful_flops(rows) == rows, "idempotent"
