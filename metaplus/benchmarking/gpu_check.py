"""The first GPU run (issue 24): is metaplus right and fast on the CUDA devices of this machine?

One command, under 10 minutes on one H100 (the plan's estimate is printed first and kept under
``--budget-s``):

1. **Meta-gradients, GPU vs CPU**: MAML++ (MSL, LSLR, per-step BN, 5 second-order steps, inner lr
   0.1) on Conv-4 48 at 84x84, one fixed synthetic meta-batch, TF32 off, each engine, against a
   float64 CPU reference. In float64 the GPU must match the CPU to ``FP64_TOLERANCE`` (1e-6
   relative, per tensor): a wrong kernel or a lost term shows here. In fp32 no fixed tolerance is
   honest: five second-order steps at this learning rate amplify rounding, and the CPU's own fp32
   meta-gradient is already 1-8 % from float64 on some tensors (measured); so the GPU's fp32 error
   must stay within ``FP32_FACTOR`` (10) times the CPU's fp32 error, and below ``FP32_FLOOR``
   (1e-5) counts as equal. Tensors whose reference gradient is below 1e-4 of the largest are left
   out (the conv biases before batch norm: their true gradient is zero, only rounding is left).
2. **Training speed**: ``--iterations`` (300) meta-iterations of MAML++ mini-ImageNet 5w1s (the
   published setting of ``bench/speed.py``) through the real Trainer on one GPU, for each engine in
   fp32 and bf16-mixed: iterations/s (after ``WARMUP`` iterations), peak GPU memory, and the GPU busy
   fraction (summed kernel time / wall time over ``PROFILED`` profiled iterations; the profiler's own
   host cost makes this a lower bound).
3. **Top-k ensemble** on the GPU: a short MAML++ run that keeps 3 checkpoints, then the ensemble test
   on ``ENSEMBLE_EPISODES`` episodes; records the device the ensemble's learner was on and its time.
4. **DDP**: with two or more GPUs, a short ``trainer=ddp trainer.devices=2`` run (time-limited: a hang
   is a failure).

Results go to ``--out`` (bench/results) as gpu.json and gpu.md, naming the device. mini-ImageNet is
read from ``$METAPLUS_DATA/miniimagenet``; where it is absent a synthetic copy in its layout (random
84x84 images; an iteration's cost does not depend on the pixels) is written to a temporary folder,
and the report says so. Without CUDA the script exits at once with status 2 and says why.

    python bench/gpu_check.py
    python bench/gpu_check.py --iterations 200 --out bench/results
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: train.py, bench/results/

RESULTS = REPO / "bench" / "results"
FP64_TOLERANCE, FP32_FACTOR, FP32_FLOOR = 1e-6, 10.0, 1e-5
NEGLIGIBLE_GRADIENT = 1e-4  # of the largest tensor's gradient norm
ENGINES = ("l2l", "batched")
PRECISIONS = ("32-true", "bf16-mixed")
SETTING = "mamlpp_miniimagenet_5w1s"
WARMUP, PROFILED = 10, 20
ENSEMBLE_EPISODES = 100
DDP_TIMEOUT_S = 240
BUDGET_S = 600
# Planning figures (seconds) for one H100, deliberately pessimistic: start-up and data of a run, and
# the slowest iterations/s expected of the four training rows.
STARTUP_S, SLOWEST_ITERATIONS_PER_S = 25.0, 8.0
GRADIENT_CHECK_S, ENSEMBLE_CHECK_S, DDP_CHECK_S = 90.0, 90.0, 120.0


def no_cuda_reason() -> str | None:
    """Why this machine cannot run the check (no CUDA device), else None."""
    import torch

    if torch.cuda.is_available():
        return None
    built = torch.version.cuda or "none (a CPU-only build)"
    return (
        f"no CUDA device: torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build {built}, "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). bench/gpu_check.py measures "
        f"GPUs only; run it on a machine with an NVIDIA GPU and a CUDA build of torch"
    )


def plan(device_count: int, iterations: int) -> list[dict]:
    """The checks this machine gets, each with its planned seconds (``estimate_s``)."""
    checks = [
        {
            "check": "gradients",
            "what": f"meta-gradients GPU vs CPU, fp64 and fp32, TF32 off, engines {', '.join(ENGINES)}",
            "estimate_s": GRADIENT_CHECK_S,
        }
    ]
    per_row = STARTUP_S + (WARMUP + iterations + PROFILED) / SLOWEST_ITERATIONS_PER_S
    checks += [
        {
            "check": f"train/{engine}/{precision}",
            "engine": engine,
            "precision": precision,
            "what": f"{iterations} iterations of {SETTING}, engine {engine}, {precision}",
            "estimate_s": per_row,
        }
        for engine in ENGINES
        for precision in PRECISIONS
    ]
    checks.append(
        {
            "check": "ensemble",
            "what": f"top-3 ensemble on {ENSEMBLE_EPISODES} test episodes on the GPU",
            "estimate_s": ENSEMBLE_CHECK_S,
        }
    )
    if device_count >= 2:
        checks.append({"check": "ddp", "what": "trainer=ddp trainer.devices=2, a short run", "estimate_s": DDP_CHECK_S})
    return checks


def planned_seconds(checks: list[dict]) -> float:
    return sum(c["estimate_s"] for c in checks)


# -- 1. meta-gradients ---------------------------------------------------------------------------
def mamlpp_learner(engine: str):
    """MAML++ on mini-ImageNet's Conv-4 (48 filters, leaky ReLU) with the switches that change the
    meta-gradient (DA and CA act between steps, not within one)."""
    from metaplus.algorithms import MAML
    from metaplus.nn import Conv4

    backbone = Conv4(input_shape=[3, 84, 84], output_dim=5, filters=48, activation="leaky_relu")
    return MAML(
        backbone,
        "classification",
        inner_steps=5,
        inner_lr=0.1,
        msl=True,
        lslr=True,
        bnrs=True,
        bnwb=True,
        engine=engine,
    )


def fixed_batch(tasks: int = 2, ways: int = 5, shots: int = 1, queries: int = 5):
    import torch

    from metaplus.data.episodes import TaskBatch

    g = torch.Generator().manual_seed(0)
    labels = lambda n: torch.arange(ways).repeat_interleave(n).repeat(tasks, 1)
    images = lambda n: torch.randn(tasks, ways * n, 3, 84, 84, generator=g)
    return TaskBatch(images(shots), labels(shots), images(queries), labels(queries), torch.arange(tasks))


def meta_gradient(engine: str, device, dtype=None) -> dict:
    """Every parameter's meta-gradient of the fixed batch, computed on ``device`` in ``dtype`` (the
    same fp32 initialisation and batch, cast), returned on the CPU in float64."""
    from contextlib import nullcontext

    import torch

    dtype = dtype or torch.float32
    torch.manual_seed(0)
    learner = mamlpp_learner(engine).to(device=device, dtype=dtype)
    learner.manual_backward = lambda loss: loss.backward()
    learner.gradient_sync = lambda last: nullcontext()
    batch = fixed_batch()
    batch = type(batch)(  # by name: the keyword-only class fields cannot be passed by position
        **{
            name: None if t is None else t.to(device, dtype=dtype if t.is_floating_point() else t.dtype)
            for name, t in vars(batch).items()
        }
    )
    learner.accumulate_meta_batch(batch)  # the training step's own dispatch
    return {n: p.grad.detach().cpu().double() for n, p in learner.named_parameters() if p.grad is not None}


def gradient_errors(reference: dict, other: dict, tolerance: float | None) -> dict:
    """Per-tensor relative errors of ``other`` against ``reference``: the worst, and whether it is
    within ``tolerance`` (None: only measured)."""
    largest = max(g.norm().item() for g in reference.values())
    errors = {
        n: ((other[n] - g).norm() / g.norm()).item()
        for n, g in reference.items()
        if g.norm().item() >= NEGLIGIBLE_GRADIENT * largest
    }
    worst = max(errors, key=errors.get)
    return {
        "worst_tensor": worst,
        "worst_relative_error": errors[worst],
        "tensors_compared": len(errors),
        "tensors_negligible": len(reference) - len(errors),
        "tolerance": tolerance,
        "ok": (tolerance is None or errors[worst] <= tolerance) and set(other) == set(reference),
    }


def compare_gradients(reference: dict, gpu64: dict, cpu32: dict, gpu32: dict) -> dict:
    """The verdict of one engine: GPU float64 against the CPU reference to ``FP64_TOLERANCE``, GPU
    fp32 within ``FP32_FACTOR`` times the CPU's own fp32 error (or under ``FP32_FLOOR``)."""
    fp64 = gradient_errors(reference, gpu64, FP64_TOLERANCE)
    cpu = gradient_errors(reference, cpu32, None)
    fp32 = gradient_errors(reference, gpu32, max(FP32_FACTOR * cpu["worst_relative_error"], FP32_FLOOR))
    return {"fp64_gpu_vs_cpu": fp64, "fp32_cpu_vs_fp64": cpu, "fp32_gpu_vs_fp64": fp32, "ok": fp64["ok"] and fp32["ok"]}


def check_gradients(device) -> dict:
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {
        engine: compare_gradients(
            meta_gradient(engine, "cpu", torch.float64),
            meta_gradient(engine, device, torch.float64),
            meta_gradient(engine, "cpu"),
            meta_gradient(engine, device),
        )
        for engine in ENGINES
    }


# -- data ----------------------------------------------------------------------------------------
def synthetic_miniimagenet(root: Path, classes=(10, 5, 5), images_per_class: int = 20) -> Path:
    """A mini-ImageNet-layout folder of random 84x84 images: ``{train,val,test}/<class>/*.png``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val", "test"), classes):
        for c in range(count):
            folder = root / split / f"n{split[:2]}{c:06d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(images_per_class):
                Image.fromarray(rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def data_root(scratch: Path) -> tuple[str, str]:
    """(mini-ImageNet root, what it is): the real copy when ``$METAPLUS_DATA`` has one, else synthetic."""
    real = Path(os.environ.get("METAPLUS_DATA", REPO.parent / "shared" / "data")) / "miniimagenet"
    if (real / "train").is_dir() or (real / "images").is_dir():
        return str(real), "mini-ImageNet ($METAPLUS_DATA/miniimagenet)"
    return str(synthetic_miniimagenet(scratch / "miniimagenet")), "synthetic mini-ImageNet layout (random 84x84 images)"


def setting_overrides(root: str) -> list[str]:
    from metaplus.benchmarking.settings import SETTINGS

    return [
        *SETTINGS[SETTING][1],
        f"data.root={root}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "~callbacks.progress_bar",
        "trainer.accelerator=gpu",
        "trainer.devices=1",
    ]


# -- 2. training speed ---------------------------------------------------------------------------
def train_row(engine: str, precision: str, iterations: int, root: str, scratch: Path) -> dict:
    import lightning as L
    import torch

    from metaplus.compose import compose_config as compose
    from metaplus.run import build

    out = scratch / f"train_{engine}_{precision}"
    cfg = compose(
        [
            *setting_overrides(root),
            f"algo.engine={engine}",
            f"trainer.precision={precision}",
            "trainer.max_epochs=1",
            f"data.batches_per_epoch={WARMUP + iterations + PROFILED}",
            "~callbacks.model_checkpoint",
            "+trainer.enable_checkpointing=false",
            "test=false",
            "+trainer.limit_val_batches=0",
            "trainer.num_sanity_val_steps=0",
        ],
        out,
    )
    L.seed_everything(0)
    parts = build(cfg)
    timing: dict = {}

    class Measure(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == WARMUP:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                timing["t0"] = time.perf_counter()
            elif batch_idx == WARMUP + iterations:
                torch.cuda.synchronize()
                timing["t1"] = time.perf_counter()
                timing["profiler"] = torch.profiler.profile(
                    activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                )
                timing["profiler"].__enter__()
                timing["p0"] = time.perf_counter()

        def on_train_end(self, trainer, module):
            torch.cuda.synchronize()
            timing["p1"] = time.perf_counter()
            if "profiler" in timing:
                timing["profiler"].__exit__(None, None, None)

    parts["trainer"].callbacks.append(Measure())
    parts["trainer"].fit(parts["learner"], datamodule=parts["datamodule"])
    planned = WARMUP + iterations + PROFILED
    if "profiler" not in timing or parts["trainer"].global_step < planned:
        # e.g. the divergence callback stopped a run whose loss blew up: a finding, not a speed figure
        raise RuntimeError(
            f"{engine} {precision}: training stopped after {parts['trainer'].global_step} of {planned} "
            f"meta-iterations, before the timed window ended (the run's warnings above say why)"
        )
    events = timing["profiler"].key_averages()
    kernel_us = sum(getattr(e, "self_device_time_total", 0) or 0 for e in events)
    return {
        "engine": engine,
        "precision": precision,
        "iterations": iterations,
        "iterations_per_s": iterations / (timing["t1"] - timing["t0"]),
        "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1024**3,
        "gpu_busy_fraction": min(kernel_us / 1e6 / (timing["p1"] - timing["p0"]), 1.0),
    }


# -- 3. ensemble ---------------------------------------------------------------------------------
def ensemble_check(root: str, scratch: Path) -> dict:
    import lightning as L

    import metaplus.run as run_module
    from metaplus.compose import compose_config as compose

    seen: dict = {}
    original = getattr(run_module, "evaluate_ensemble", None)

    def recording(learner, *args, **kwargs):
        seen["device"] = str(next(learner.parameters()).device)
        start = time.perf_counter()
        out = original(learner, *args, **kwargs)
        seen["seconds"] = time.perf_counter() - start
        return out

    if original is not None:
        run_module.evaluate_ensemble = recording
    try:
        cfg = compose(
            [
                *setting_overrides(root),
                "trainer.max_epochs=3",
                "data.batches_per_epoch=20",
                "data.val_episodes=20",
                f"data.test_episodes={ENSEMBLE_EPISODES}",
                "ensemble_top_k=3",
            ],
            scratch / "ensemble",
        )
        L.seed_everything(0)
        metrics = run_module.run(cfg)
    finally:
        if original is not None:
            run_module.evaluate_ensemble = original
    return {
        "ensemble_device": seen.get("device", "unknown (metaplus.run has no evaluate_ensemble to watch)"),
        "ensemble_seconds": seen.get("seconds"),
        "episodes": ENSEMBLE_EPISODES,
        "test/acc": metrics.get("test/acc"),
        "test/acc_ensemble": metrics.get("test/acc_ensemble"),
        "ok": metrics.get("test/acc_ensemble") is not None and seen.get("device", "cuda").startswith("cuda"),
    }


# -- 4. DDP --------------------------------------------------------------------------------------
def ddp_check(root: str, scratch: Path) -> dict:
    out = scratch / "ddp"
    command = [
        sys.executable,
        str(REPO / "train.py"),
        *setting_overrides(root)[:-1],
        "trainer=ddp",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "data.batches_per_epoch=20",
        "data.val_episodes=20",
        "data.test_episodes=20",
        "ensemble_top_k=0",
        f"hydra.run.dir={out}",
    ]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=DDP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"ok": False, "seconds": DDP_TIMEOUT_S, "error": f"no result within {DDP_TIMEOUT_S} s (a hang?)"}
    seconds = time.perf_counter() - start
    results = out / "results.json"
    return {
        "ok": done.returncode == 0 and results.is_file(),
        "seconds": seconds,
        "returncode": done.returncode,
        "error": None if done.returncode == 0 else done.stderr[-2000:],
    }


# -- report ----------------------------------------------------------------------------------------
def device_record() -> dict:
    import torch

    return {
        "name": torch.cuda.get_device_name(0),
        "count": torch.cuda.device_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
    }


def markdown(results: dict) -> str:
    """gpu.md from the measurements (also the layout the tests check on a made-up result)."""
    device = results["device"]
    lines = [
        f"# GPU check: {device['name']} x{device['count']}",
        "",
        f"torch {device['torch']}, CUDA {device['cuda']}, cuDNN {device['cudnn']}; data: {results['data']}; "
        f"total {results['seconds']:.0f} s (planned {results['planned_s']:.0f} s).",
        "",
        "## Meta-gradients, GPU vs CPU (TF32 off), worst relative error per tensor against a float64 CPU reference",
        "",
        f"fp64: GPU vs CPU within {FP64_TOLERANCE:g}; fp32: the GPU within {FP32_FACTOR:g}x the CPU's own fp32 "
        f"error (or under {FP32_FLOOR:g}).",
        "",
        "| engine | fp64 GPU vs CPU | fp32 CPU | fp32 GPU | fp32 tolerance | tensors compared | ok |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, row in results.get("gradients", {}).items():
        fp64, cpu, gpu = row["fp64_gpu_vs_cpu"], row["fp32_cpu_vs_fp64"], row["fp32_gpu_vs_fp64"]
        lines.append(
            f"| {engine} | {fp64['worst_relative_error']:.1e} ({fp64['worst_tensor']}) | "
            f"{cpu['worst_relative_error']:.1e} | {gpu['worst_relative_error']:.1e} ({gpu['worst_tensor']}) | "
            f"{gpu['tolerance']:.1e} | {gpu['tensors_compared']} (+{gpu['tensors_negligible']} negligible) | "
            f"{'yes' if row['ok'] else 'NO'} |"
        )
    lines += [
        "",
        f"## Training, {SETTING}",
        "",
        "| engine | precision | iterations | iterations/s | peak GPU memory (GB) | GPU busy |",
        "|---|---|---|---|---|---|",
    ]
    for row in results.get("training", []):
        lines.append(
            f"| {row['engine']} | {row['precision']} | {row['iterations']} | {row['iterations_per_s']:.2f} | "
            f"{row['peak_gpu_gb']:.2f} | {row['gpu_busy_fraction']:.0%} |"
        )
    if "ensemble" in results:
        e = results["ensemble"]
        seconds = "n/a" if e.get("ensemble_seconds") is None else f"{e['ensemble_seconds']:.1f} s"
        accuracy = "missing" if e.get("test/acc_ensemble") is None else f"{e['test/acc_ensemble']:.4f}"
        lines += [
            "",
            "## Top-k ensemble",
            "",
            f"device {e['ensemble_device']}, {e['episodes']} episodes, {seconds}; "
            f"test/acc_ensemble {accuracy}; ok: {'yes' if e['ok'] else 'NO'}",
        ]
    ddp = results.get("ddp")
    lines += [
        "",
        "## DDP (2 GPUs)",
        "",
        "not run: fewer than two GPUs"
        if ddp is None
        else f"{'ok' if ddp['ok'] else 'FAILED'} in {ddp['seconds']:.0f} s"
        + ("" if ddp["ok"] else f": {ddp.get('error')}"),
    ]
    for name, error in results.get("errors", {}).items():
        lines.append(f"\n**{name} failed**: {error}")
    return "\n".join(lines) + "\n"


def write(results: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(results))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300, help="timed meta-iterations per training row")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for gpu.json and gpu.md")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="refuse a plan estimated above this")
    args = parser.parse_args(argv)
    reason = no_cuda_reason()
    if reason:
        print(f"bench/gpu_check.py: {reason}", file=sys.stderr)
        return 2
    import torch

    checks = plan(torch.cuda.device_count(), args.iterations)
    planned = planned_seconds(checks)
    for c in checks:
        print(f"  {c['check']:24s} ~{c['estimate_s']:4.0f} s  {c['what']}")
    if planned > args.budget_s:
        print(
            f"bench/gpu_check.py: the plan needs ~{planned:.0f} s > --budget-s {args.budget_s:.0f}; lower --iterations",
            file=sys.stderr,
        )
        return 2
    start = time.perf_counter()
    results: dict = {"device": device_record(), "planned_s": planned, "training": [], "errors": {}}
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        scratch = Path(tmp)
        root, results["data"] = data_root(scratch)
        for c in checks:  # each check on its own: one failure does not hide the others' figures
            try:
                if c["check"] == "gradients":
                    results["gradients"] = check_gradients(torch.device("cuda"))
                elif c["check"].startswith("train/"):
                    results["training"].append(train_row(c["engine"], c["precision"], args.iterations, root, scratch))
                elif c["check"] == "ensemble":
                    results["ensemble"] = ensemble_check(root, scratch)
                elif c["check"] == "ddp":
                    results["ddp"] = ddp_check(root, scratch)
            except Exception as error:  # noqa: BLE001 (reported, and the exit status says so)
                results["errors"][c["check"]] = f"{type(error).__name__}: {error}"
            print(f"done {c['check']} at {time.perf_counter() - start:.0f} s", flush=True)
        results["seconds"] = time.perf_counter() - start
        write(results, args.out)
    print(markdown(results))
    failed = results["errors"] or not all(r["ok"] for r in results.get("gradients", {}).values())
    failed = failed or not results.get("ensemble", {}).get("ok", True) or not results.get("ddp", {}).get("ok", True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
