"""The device a run trains on is asked for explicitly and recorded (issue 24, bug 7)."""

import json

import pytest
import torch

from metaplus.config import ConfigError
from metaplus.devices import cpu_name, device_line
from metaplus.testing import QUICK


@pytest.mark.parametrize("trainer", ["ddp", "gpu"])
def test_gpu_trainers_ask_for_gpus_and_fail_clearly_without_them(trainer, make_config, monkeypatch, tmp_path):
    """``trainer=ddp`` used ``accelerator: auto``: with a CUDA wheel the driver cannot run, its ranks
    trained on the CPU over gloo without a word. Now it asks for GPUs and stops before building anything."""
    from metaplus.run import run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine whose driver is too old
    cfg = make_config([*QUICK, f"trainer={trainer}"], output_dir=tmp_path / "run")
    assert cfg.trainer.accelerator == "gpu"
    with pytest.raises(ConfigError, match=r"trainer\.accelerator: 'gpu' asks for GPUs, but .*trainer\.accelerator=cpu"):
        run(cfg)
    assert not (tmp_path / "run").exists(), "nothing written"


def test_results_record_the_device_the_run_used(make_config, tmp_path):
    from metaplus.run import run

    run(make_config([*QUICK, "trainer.accelerator=cpu"], output_dir=tmp_path / "run"))
    device = json.loads((tmp_path / "run" / "results.json").read_text())["device"]
    assert device == {
        "type": "cpu",
        "name": cpu_name(),
        "devices_per_node": 1,
        "nodes": 1,
        "processes": 1,
        "precision": "32-true",
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
    }
    line = device_line(device)
    assert line.startswith(
        f"device: 1 x cpu {cpu_name()} (1 node, 1 process), precision 32-true, torch {torch.__version__}"
    )
