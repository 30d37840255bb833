"""bench/gpu_check.py without a GPU: its clean refusal, its plan and its report."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch

from metaplus.benchmarking import gpu_check
from metaplus.testing import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_it_exits_at_once_saying_so(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--out", str(tmp_path / "out")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr and "torch.cuda.is_available() is False" in done.stderr
    assert time.perf_counter() - start < 60  # at once: torch's import, nothing measured
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_plan_fits_ten_minutes_and_adds_ddp_only_with_two_gpus():
    one, two = gpu_check.plan(1, 300), gpu_check.plan(2, 300)
    assert [c["check"] for c in one] == [
        "gradients",
        "train/l2l/32-true",
        "train/l2l/bf16-mixed",
        "train/batched/32-true",
        "train/batched/bf16-mixed",
        "ensemble",
    ]
    assert [c["check"] for c in two] == [c["check"] for c in one] + ["ddp"]
    assert gpu_check.planned_seconds(two) <= gpu_check.BUDGET_S
    assert gpu_check.planned_seconds(gpu_check.plan(1, 3000)) > gpu_check.BUDGET_S  # main refuses this one


def test_gradient_verdict_leaves_out_zero_gradients_and_scales_the_fp32_tolerance_with_the_cpu():
    reference = {"w": torch.tensor([3.0, 4.0], dtype=torch.float64), "conv_bias": torch.tensor([1e-9, -1e-9])}
    off = lambda dw: {"w": reference["w"] + torch.tensor([0.0, dw]), "conv_bias": torch.tensor([5e-8, 0.0])}
    # the CPU's fp32 is 1e-3 off (relative 2e-4), the GPU's 5e-3 (1e-3): within 10x the CPU's error
    result = gpu_check.compare_gradients(reference, off(1e-7), cpu32=off(1e-3), gpu32=off(5e-3))
    assert result["ok"]
    assert result["fp32_gpu_vs_fp64"]["tolerance"] == pytest.approx(10 * 1e-3 / 5, rel=1e-6)
    assert result["fp32_gpu_vs_fp64"]["tensors_compared"] == 1  # the zero-gradient bias is left out
    assert result["fp32_gpu_vs_fp64"]["tensors_negligible"] == 1
    assert not gpu_check.compare_gradients(reference, off(1e-7), cpu32=off(1e-3), gpu32=off(2e-2))["ok"]
    assert not gpu_check.compare_gradients(reference, off(1e-4), cpu32=off(1e-3), gpu32=off(1e-3))["ok"]  # fp64
    exact = gpu_check.compare_gradients(reference, reference, cpu32=reference, gpu32=off(2e-5))
    assert exact["ok"] and exact["fp32_gpu_vs_fp64"]["tolerance"] == gpu_check.FP32_FLOOR


def fake_results(ddp=None) -> dict:
    row = lambda error, tolerance, ok: {
        "worst_tensor": "backbone.blocks.0.conv.weight",
        "worst_relative_error": error,
        "tensors_compared": 20,
        "tensors_negligible": 8,
        "tolerance": tolerance,
        "ok": ok,
    }
    gradients = {
        "l2l": {
            "fp64_gpu_vs_cpu": row(1e-12, 1e-6, True),
            "fp32_cpu_vs_fp64": row(0.05, None, True),
            "fp32_gpu_vs_fp64": row(0.04, 0.5, True),
            "ok": True,
        },
        "batched": {
            "fp64_gpu_vs_cpu": row(0.3, 1e-6, False),
            "fp32_cpu_vs_fp64": row(0.05, None, True),
            "fp32_gpu_vs_fp64": row(0.3, 0.5, True),
            "ok": False,
        },
    }
    training = [
        {
            "engine": e,
            "precision": p,
            "iterations": 300,
            "iterations_per_s": 12.5,
            "peak_gpu_gb": 1.25,
            "gpu_busy_fraction": 0.4,
        }
        for e in gpu_check.ENGINES
        for p in gpu_check.PRECISIONS
    ]
    return {
        "device": {"name": "NVIDIA H100 80GB HBM3", "count": 1, "torch": "2.x", "cuda": "12.x", "cudnn": 90000},
        "planned_s": 500.0,
        "seconds": 431.0,
        "data": "synthetic mini-ImageNet layout",
        "gradients": gradients,
        "training": training,
        "ensemble": {
            "ensemble_device": "cuda:0",
            "ensemble_seconds": 12.0,
            "episodes": 100,
            "test/acc_ensemble": 0.3,
            "ok": True,
        },
        "ddp": ddp,
        "errors": {},
    }


def test_report_names_the_device_and_every_figure(tmp_path):
    results = fake_results()
    gpu_check.write(results, tmp_path)
    assert json.loads((tmp_path / "gpu.json").read_text())["training"] == results["training"]
    md = (tmp_path / "gpu.md").read_text()
    assert md.startswith("# GPU check: NVIDIA H100 80GB HBM3 x1")
    assert (
        "| batched | 3.0e-01 (backbone.blocks.0.conv.weight) | 5.0e-02 | 3.0e-01 (backbone.blocks.0.conv.weight) "
        "| 5.0e-01 | 20 (+8 negligible) | NO |"
    ) in md
    assert "| l2l | 1.0e-12" in md and md.count("| yes |") == 1
    assert md.count("| 300 | 12.50 | 1.25 | 40% |") == 4
    assert "device cuda:0, 100 episodes, 12.0 s; test/acc_ensemble 0.3000; ok: yes" in md
    assert "not run: fewer than two GPUs" in md
    failed = gpu_check.markdown(fake_results(ddp={"ok": False, "seconds": 240, "error": "no result within 240 s"}))
    assert "FAILED in 240 s: no result within 240 s" in failed


def test_training_ensemble_and_gradient_checks_run_end_to_end_on_the_cpu(tmp_path, monkeypatch):
    """The GPU-only paths (train_row, ensemble_check, check_gradients) run here on the CPU, with only the
    CUDA specifics stubbed, so an import that moved, a config key that is gone or a changed signature
    fails on a machine without a GPU (the first GPU run is the wrong place to find those)."""
    import metaplus.compose

    # the data: no real mini-ImageNet, so data_root writes the synthetic layout; a private decode cache
    monkeypatch.setenv("METAPLUS_DATA", str(tmp_path / "no_data"))
    monkeypatch.setenv("METAPLUS_CACHE", str(tmp_path / "cache"))
    root, data = gpu_check.data_root(tmp_path)
    assert data.startswith("synthetic") and (tmp_path / "miniimagenet" / "test").is_dir()

    # the GPU specifics: the accelerator the overrides ask for, CUDA's memory and synchronisation calls
    gpu_overrides = gpu_check.setting_overrides
    assert "trainer.accelerator=gpu" in gpu_overrides(root)
    monkeypatch.setattr(
        gpu_check,
        "setting_overrides",
        lambda root: [o.replace("trainer.accelerator=gpu", "trainer.accelerator=cpu") for o in gpu_overrides(root)],
    )
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 0)
    # tiny sizes: every override the module passes is still composed (and checked by Hydra); these come last
    full_compose = metaplus.compose.compose_config
    tiny = ["data.queries=1", "data.batches_per_epoch=3", "data.val_episodes=2"]
    monkeypatch.setattr(
        metaplus.compose, "compose_config", lambda overrides, *a, **k: full_compose([*overrides, *tiny], *a, **k)
    )
    monkeypatch.setattr(gpu_check, "WARMUP", 1)
    monkeypatch.setattr(gpu_check, "PROFILED", 1)  # WARMUP + 1 iteration + PROFILED = the 3 batches above
    monkeypatch.setattr(gpu_check, "ENSEMBLE_EPISODES", 2)

    row = gpu_check.train_row("batched", "32-true", 1, root, tmp_path)
    assert (row["engine"], row["precision"], row["iterations"]) == ("batched", "32-true", 1)
    assert row["iterations_per_s"] > 0 and row["peak_gpu_gb"] == 0 and 0 <= row["gpu_busy_fraction"] <= 1
    # a run the divergence callback stops (a loss ceiling nothing stays under) is reported as stopped,
    # not as a KeyError from the timing it never reached
    tiny.extend(["callbacks.divergence.max_loss=1e-9", "callbacks.divergence.patience=1"])
    tiny.append("callbacks.divergence.check_every_n_steps=1")
    with pytest.raises(RuntimeError, match=r"training stopped after 1 of 3 meta-iterations"):
        gpu_check.train_row("l2l", "32-true", 1, root, tmp_path)
    del tiny[3:]

    ensemble = gpu_check.ensemble_check(root, tmp_path)
    assert ensemble["ensemble_device"] == "cpu"  # the learner the ensemble ran was watched
    assert ensemble["test/acc_ensemble"] is not None and ensemble["ensemble_seconds"] > 0
    assert not ensemble["ok"]  # on the CPU: the check wants the ensemble on a GPU

    # the gradient check on the CPU against itself: one task of one query per class keeps it short
    full_batch = gpu_check.fixed_batch
    monkeypatch.setattr(gpu_check, "fixed_batch", lambda: full_batch(tasks=1, queries=1))
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        gradients = gpu_check.check_gradients("cpu")
    finally:  # check_gradients turns TF32 off for the process: give the flags back as they were
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    assert set(gradients) == set(gpu_check.ENGINES)
    for verdict in gradients.values():  # the CPU against itself: equal in fp64, the same fp32 error
        assert verdict["ok"] and verdict["fp64_gpu_vs_cpu"]["worst_relative_error"] == 0
        assert verdict["fp32_gpu_vs_fp64"]["tensors_compared"] > 0
