"""How far a run is from the processor's limit: floating-point operations counted over a real step,
the machine's attainable peak measured beside it, and the ratio of the two (issue 26).

The count is torch's own (:class:`torch.utils.flop_counter.FlopCounterMode`): the multiply-adds of
matrix products and convolutions, two FLOPs each, in the forward pass and in every backward pass run
inside the counted region, so the double backward of second-order MAML (the backward of the inner
gradients) is counted too. Element-wise work (batch norm, activations, pooling, Adam) is not counted:
it is memory-bound and small next to the convolutions, and the peak below is a matrix product's.

The peak is a large fp32 matrix product timed in the calling process with its current thread count
(best of several): what this machine attains on the same kind of work with the same threads, on a
machine shared with other jobs too (a busy core lowers the peak and the achieved rate alike).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode


def flop_counter() -> FlopCounterMode:
    """A silent FLOP counter; enter it around the work to count (``with`` or ``__enter__/__exit__``
    from two callbacks), then read ``get_total_flops()``."""
    return FlopCounterMode(display=False)


def count_flops(work: Callable[..., Any], *args: Any, **kwargs: Any) -> int:
    """FLOPs of running ``work(*args, **kwargs)`` once (its forward and any backward it runs)."""
    with flop_counter() as counter:
        work(*args, **kwargs)
    return int(counter.get_total_flops())


def matmul_peak_gflops(
    size: int = 2048,
    repeats: int = 5,
    device: str | torch.device = "cpu",
    sync: Callable[[], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> float:
    """Attainable fp32 rate of this process in GFLOP/s: the best of ``repeats`` timed ``size x size``
    matrix products (2 size^3 FLOPs each) after one warm-up, with torch's current thread count. The
    best, not the median: on a shared machine the fastest repeat is the one least disturbed.
    ``clock=time.process_time`` gives the rate per CPU second (with one thread: per busy core), the
    peak to set a step's CPU time against on a machine whose cores other jobs share."""
    if size < 1 or repeats < 1:
        raise ValueError(f"size and repeats must be >= 1, got size={size}, repeats={repeats}")
    sync = sync or (lambda: None)
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)  # warm-up: thread pool start, first-touch of the output
    best = float("inf")
    for _ in range(repeats):
        sync()
        start = clock()
        torch.mm(a, b, out=out)
        sync()
        best = min(best, clock() - start)
    return 2 * size**3 / best / 1e9


def utilisation(flops: float, seconds: float, peak_gflops: float) -> dict[str, float]:
    """``gflops_per_s`` achieved by ``flops`` in ``seconds``, and ``utilisation`` = achieved / peak."""
    if seconds <= 0 or peak_gflops <= 0:
        raise ValueError(f"seconds and peak_gflops must be > 0, got seconds={seconds}, peak_gflops={peak_gflops}")
    achieved = flops / seconds / 1e9
    return {"gflops_per_s": achieved, "utilisation": achieved / peak_gflops}


# -- bench/speed.py's rows ------------------------------------------------------------------------
def utilisation_fields(
    flops: int, s_it: float, peak_gflops: float, cpu_it: float | None = None, cpu_peak_gflops: float | None = None
) -> dict:
    """A row's FLOPs per meta-iteration, the GFLOP/s it achieved at its wall-clock s/iteration, the
    matmul peak its own process measured, and ``utilisation`` = achieved / peak
    (``metaplus.benchmarking.flops``; counted FLOPs are convolutions and matrix products only).
    With ``cpu_it`` and ``cpu_peak_gflops`` also ``cpu_utilisation``: both rates per CPU second (the
    step's process time, the matmul's process time), which waiting for a core on a shared machine
    does not inflate."""
    rates = utilisation(flops, s_it, peak_gflops)
    fields = {
        "gflop_per_iteration": round(flops / 1e9, 3),
        "gflops_per_s": round(rates["gflops_per_s"], 2),
        "peak_gflops": round(peak_gflops, 2),
        "utilisation": round(rates["utilisation"], 3),
    }
    if cpu_it is not None and cpu_peak_gflops is not None:
        cpu_rates = utilisation(flops, cpu_it, cpu_peak_gflops)
        fields.update(
            cpu_gflops_per_s=round(cpu_rates["gflops_per_s"], 2),
            cpu_peak_gflops=round(cpu_peak_gflops, 2),
            cpu_utilisation=round(cpu_rates["utilisation"], 3),
        )
    return fields


#: Engines that compute the default engine's meta-gradient with more operations: the batched engine
#: (vmap's batching rule for the convolution backward computes gradients the loop does not; counted
#: 2.5x a per-task loop's FLOPs for one conv's weight gradient) and checkpoint_steps (recomputes each
#: inner step). Their utilisation is the default engine's count (the work the meta-gradient needs) over
#: their time; their own count stays in ``gflop_counted``.
SAME_META_GRADIENT_AS_L2L = ("batched", "l2l_checkpoint_steps")


def useful_flops(rows: list[dict]) -> list[dict]:
    """Rows of :data:`SAME_META_GRADIENT_AS_L2L` engines with the l2l row's FLOP count of their setting
    as the work done (utilisation recomputed from their own times and peaks); others unchanged."""
    counts = {
        r["setting"]: r["gflop_per_iteration"] for r in rows if r["engine"] == "l2l" and "gflop_per_iteration" in r
    }
    out = []
    for r in rows:
        if r["engine"] in SAME_META_GRADIENT_AS_L2L and r["setting"] in counts and "gflop_per_iteration" in r:
            counted = r.get("gflop_counted", r["gflop_per_iteration"])
            fields = utilisation_fields(
                int(counts[r["setting"]] * 1e9),
                r["s_per_iteration"],
                r["peak_gflops"],
                r.get("cpu_s_per_iteration"),
                r.get("cpu_peak_gflops"),
            )
            r = {**r, **fields, "gflop_counted": counted, "flops_from": "l2l"}
        out.append(r)
    return out
