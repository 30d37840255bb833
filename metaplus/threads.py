"""How many torch threads a training process gets: its share of the cores, unless the user chose.

Several processes that each take torch's default (one thread per core) oversubscribe the CPU: two
training processes on two cores ran 4x slower than one (issue 13). Every process that trains (a
single run, each rank of a DDP run, each parallel job of ``hydra/launcher=submitit_local``, each
job of a bench script's ``--jobs``) therefore takes ``cores // processes`` threads, where
``processes`` is how many such processes share this machine's cores. The user's choice wins:
the ``threads`` config key first, then ``OMP_NUM_THREADS`` (torch already honours it).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from metaplus.errors import ConfigError, check

log = logging.getLogger("metaplus")
S, T, R = TypeVar("S"), TypeVar("T"), TypeVar("R")


def available_cores() -> int:
    """Cores this process may run on (its affinity mask: respects taskset, cgroups cpusets, SLURM)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decide_threads(configured: Any, environ: Mapping[str, str], cores: int, processes: int) -> tuple[int, str]:
    """(threads, why). ``configured`` is the ``threads`` key (None = not set)."""
    if configured is not None:
        check(
            "threads",
            configured,
            isinstance(configured, int) and not isinstance(configured, bool) and configured >= 1,
            "null (cores / processes) or an integer >= 1",
        )
        return configured, "config key threads"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    if omp:
        if not omp.isdigit() or int(omp) < 1:
            raise ConfigError("OMP_NUM_THREADS", f"{omp!r} is invalid: must be an integer >= 1")
        return int(omp), "OMP_NUM_THREADS"
    processes = max(int(processes), 1)
    return max(cores // processes, 1), f"{cores} cores / {processes} processes"


def trainer_processes(trainer_cfg: Mapping[str, Any], environ: Mapping[str, str]) -> int:
    """Processes Lightning starts on this node for one run: one per device (DDP), else one.
    Under ``srun`` each task already has its own cores (its affinity mask), so it counts as one.

    ``devices`` as Lightning reads it: a count, a list of indices, ``"0,1"``, or ``-1`` / ``"auto"``:
    every visible GPU when the run trains on GPUs (``accelerator`` gpu/cuda, or auto with CUDA
    usable), one process on the CPU (Lightning's CPU accelerator counts ``auto`` as one device)."""
    if int(environ.get("SLURM_NTASKS", "1") or 1) > 1:
        return 1
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:  # "0,1": GPU indices
            return max(len([d for d in devices.split(",") if d.strip()]), 1)
        devices = int(devices) if devices.lstrip("-").isdigit() else devices
    if devices == "auto" or devices == -1:
        return max(torch.cuda.device_count(), 1) if trains_on_gpu(trainer_cfg) else 1
    if isinstance(devices, int) and not isinstance(devices, bool):
        return max(devices, 1)
    if hasattr(devices, "__len__"):  # a list of device indices (list, tuple, ListConfig)
        return max(len(devices), 1)
    return 1  # anything else: Lightning rejects it when it builds the trainer


def trains_on_gpu(trainer_cfg: Mapping[str, Any]) -> bool:
    """Whether Lightning will put this run on CUDA GPUs (``accelerator`` gpu/cuda, or auto with one usable)."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def parallel_jobs() -> int:
    """How many jobs of this Hydra multirun run at once: all of the sweep (capped by the sweeper's
    ``max_batch_size``) under the ``submitit_local`` launcher, one under the basic launcher
    (sequential) or outside a multirun. The sweep's size is read from the ``multirun.yaml`` Hydra
    writes into the sweep directory before launching."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return 1
    hydra_cfg = HydraConfig.get()
    launcher = hydra_cfg.get("launcher") or {}
    if hydra_cfg.get("mode") != RunMode.MULTIRUN or not str(launcher.get("_target_", "")).endswith("LocalLauncher"):
        return 1
    size = sweep_size(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    # The sweeper hands the launcher at most max_batch_size jobs at once; submitit's local executor
    # starts all it is handed.
    batch = (hydra_cfg.get("sweeper") or {}).get("max_batch_size")
    return max(min(size, int(batch)) if batch else size, 1)


def sweep_size(multirun_yaml: Path) -> int:
    """Number of jobs of the sweep recorded in ``multirun.yaml`` (product of the swept values)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    if not multirun_yaml.is_file():
        return 1
    overrides = list(OmegaConf.load(multirun_yaml).hydra.overrides.task)
    size = 1
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            size *= len(list(override.sweep_iterator()))
    return size


def configure_threads(configured: Any = None, processes: int = 1, environ: Mapping[str, str] | None = None) -> int:
    """Decide, apply (``torch.set_num_threads``) and log ``threads: N (why)``; return N."""
    environ = os.environ if environ is None else environ
    threads, why = decide_threads(configured, environ, available_cores(), processes)
    torch.set_num_threads(threads)
    # Exported so the processes this one starts inherit the decision: Lightning's DDP launcher would
    # otherwise set its own OMP_NUM_THREADS (cpu_count // processes) and reset this process's threads.
    os.environ["OMP_NUM_THREADS"] = str(threads)
    log.info("threads: %d (%s)", threads, why)
    return threads


def configure_run_threads(cfg: Mapping[str, Any]) -> int:
    """The run's threads: its Lightning processes times the multirun's parallel jobs share the cores.
    The allocator (``malloc_keep_buffers``, :mod:`metaplus.allocator`) is set here too, before any
    tensor work, as the threads are."""
    from metaplus.allocator import configure_allocator

    configure_allocator(cfg.get("malloc_keep_buffers", False))
    processes = trainer_processes(cfg.get("trainer", {}), os.environ) * parallel_jobs()
    return configure_threads(cfg.get("threads"), processes)


def map_on_workers(
    fn: Callable[[S, T], R], items: Iterable[tuple[int, T]], states: Sequence[S], shared: Iterable[torch.Tensor] = ()
) -> dict[int, R]:
    """``{key: fn(state, item)}`` for every ``(key, item)`` of ``items``, on ``len(states)`` Python threads
    that each run torch with one intra-op thread (the process's thread count is restored after).

    For independent pieces of work that are each too small to keep several intra-op threads busy
    (one few-shot episode adapted on the CPU): N threads of one op thread each scaled 1.88-1.96x on 2
    cores where 2 intra-op threads scaled 1.62-1.72x (MAML++ mini-ImageNet 5w1s test episodes,
    bench/results/eval_cost.md). Each state (e.g. a worker's own copies of some modules) is held by one
    thread at a time, so ``fn`` may mutate it. Items are drawn from ``items`` by the calling thread, a
    few ahead of the workers. With one state, ``fn`` runs in the calling thread, threads untouched.
    Grad mode and CPU autocast are per thread in torch: the workers run ``fn`` under the calling
    thread's (e.g. Lightning's no_grad evaluation under ``bf16-mixed``).

    ``shared``: the leaf tensors that several workers build graphs on (a learner's parameters). Their
    autograd accumulator nodes are held for the duration by views made here. Without that, torch creates
    such a node under the tensor's autograd lock and then takes the GIL, while a worker holding the GIL
    (indexing the same parameter) waits for that lock: the process hangs (seen in the test suite:
    evaluation episodes on two workers, tests/test_threads.py reproduces it).
    """
    if len(states) == 1:
        return {key: fn(states[0], item) for key, item in items}
    free: queue.SimpleQueue = queue.SimpleQueue()
    for state in states:
        free.put(state)
    grad_enabled = torch.is_grad_enabled()
    autocast = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")

    def work(item: T) -> R:
        state = free.get()
        try:
            with torch.set_grad_enabled(grad_enabled), torch.autocast("cpu", dtype=autocast[1], enabled=autocast[0]):
                return fn(state, item)
        finally:
            free.put(state)

    with torch.enable_grad():  # views from C++ only: a node wrapped in Python would take the GIL again
        held = [t.view_as(t) for t in shared if t.requires_grad and t.is_leaf]
    threads = torch.get_num_threads()
    results: dict[int, R] = {}
    pending: dict[concurrent.futures.Future, int] = {}
    torch.set_num_threads(1)
    try:
        with concurrent.futures.ThreadPoolExecutor(len(states)) as pool:
            for key, item in items:
                pending[pool.submit(work, item)] = key
                if len(pending) >= 2 * len(states):  # keep few items (episodes on a device) in flight
                    done, _ = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                    for future in done:
                        results[pending.pop(future)] = future.result()
            for future in concurrent.futures.as_completed(list(pending)):
                results[pending.pop(future)] = future.result()
    finally:
        torch.set_num_threads(threads)
        del held
    return results
