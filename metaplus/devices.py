"""The device a run actually trains on, said once and in one form.

``trainer.accelerator: auto`` quietly falls back to the CPU when a CUDA wheel meets a driver too old
for it (issue 24, bug 7): a "multi-GPU" run then trains CPU ranks over gloo and nobody notices. So
:func:`check_accelerator` refuses an explicit GPU request that cannot be met before anything is
built, and :func:`describe_devices` says what the trainer really uses (``results.json`` key
``device``); :func:`device_line` is the same as one line for a run's start.
"""

from __future__ import annotations

import platform
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from metaplus.config import ConfigError

GPU_ACCELERATORS = ("gpu", "cuda")


def cuda_unusable_reason() -> str | None:
    """None when a CUDA device is usable; else why not, in words (with what torch itself warned)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        usable = torch.cuda.is_available()
    if usable:
        return None
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU-only build"
    why = (
        "; ".join(str(w.message).strip() for w in caught) or "no CUDA device is visible (CUDA_VISIBLE_DEVICES, driver?)"
    )
    return f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but cannot use a GPU: {why}"


def check_accelerator(trainer_cfg: Mapping[str, Any]) -> None:
    """A run that asks for GPUs (``trainer.accelerator: gpu``, e.g. ``trainer=gpu`` / ``trainer=ddp``)
    and has none usable stops here, before data or processes are set up, instead of Lightning's
    error after them (or, with ``auto``, a silent CPU run)."""
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator not in GPU_ACCELERATORS:
        return
    reason = cuda_unusable_reason()
    if reason is not None:
        raise ConfigError(
            "trainer.accelerator",
            f"{accelerator!r} asks for GPUs, but {reason}. Fix the driver/CUDA "
            f"install, or train on the CPU on purpose: trainer.accelerator=cpu "
            f"(DDP on CPU: trainer=ddp trainer.accelerator=cpu, gloo)",
        )


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_devices(trainer) -> dict[str, Any]:
    """What this trainer trains on: device type and name, devices per node, nodes, processes in
    all, precision, and the versions of torch, the CUDA it was built for (``torch_cuda``) and cuDNN (on GPUs). JSON-ready."""
    root = trainer.strategy.root_device
    if root.type == "cuda":
        name = torch.cuda.get_device_name(root)
        capability = ".".join(map(str, torch.cuda.get_device_capability(root)))
    else:
        name, capability = cpu_name() if root.type == "cpu" else root.type, None
    described = {
        "type": root.type,
        "name": name,
        "devices_per_node": trainer.num_devices,
        "nodes": trainer.num_nodes,
        "processes": trainer.world_size,
        "precision": str(trainer.precision),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }
    if root.type == "cuda":
        described.update({"compute_capability": capability, "cudnn": torch.backends.cudnn.version()})
    return described


def device_line(described: Mapping[str, Any]) -> str:
    """One line for a run's start, e.g. ``device: 2 x cuda NVIDIA H100 80GB HBM3 (1 node, 2 processes),
    precision bf16-mixed, torch 2.14.1 (built for CUDA 13.0)``."""
    cuda = f" (built for CUDA {described['torch_cuda']})" if described.get("torch_cuda") else ""
    nodes = described["nodes"]
    return (
        f"device: {described['devices_per_node']} x {described['type']} {described['name']} ({nodes} "
        f"node{'s' if nodes != 1 else ''}, {described['processes']} process{'es' if described['processes'] != 1 else ''}), "
        f"precision {described['precision']}, torch {described['torch']}{cuda}"
    )
