"""results.json and checkpoints get the mode a plain open() gives (0666 less the umask), not mkstemp's 0600."""

import os
import stat

import pytest
import torch

from metaplus.callbacks.checkpoint_io import AtomicCheckpointIO
from metaplus.results import write_json_atomic


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_results_json_and_checkpoints_honour_the_umask(tmp_path, umask_022):
    write_json_atomic(tmp_path / "results.json", {"test/acc": 0.5})
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "checkpoints" / "last.ckpt")
    assert mode(tmp_path / "results.json") == 0o644
    assert mode(tmp_path / "checkpoints" / "last.ckpt") == 0o644
    os.umask(0o077)  # a private umask stays private
    write_json_atomic(tmp_path / "private.json", {})
    assert mode(tmp_path / "private.json") == 0o600
