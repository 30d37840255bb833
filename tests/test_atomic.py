"""metaplus.atomic, the one atomic writer of results.json, checkpoints and the image cache: a new file gets
the mode open() gives (0666 less the umask, not mkstemp's 0600) unless its writer fixes one, and a failed
write keeps the previous file and leaves no temporary file behind."""

import os
import pickle
import stat

import pytest
import torch

from metaplus.atomic import save_torch_atomic, write_text_atomic
from metaplus.callbacks.checkpoint_io import AtomicCheckpointIO
from metaplus.data.cache import cached_class_images
from metaplus.data.class_images import ClassImages
from metaplus.results import write_json_atomic


@pytest.fixture
def umask():
    """Set the process's umask for one test (put back after it)."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_results_json_and_checkpoints_honour_the_umask(tmp_path, umask):
    write_json_atomic(tmp_path / "results.json", {"test/acc": 0.5})
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "checkpoints" / "last.ckpt")
    assert mode(tmp_path / "results.json") == 0o644
    assert mode(tmp_path / "checkpoints" / "last.ckpt") == 0o644
    umask(0o077)  # a private umask stays private
    write_json_atomic(tmp_path / "private.json", {})
    assert mode(tmp_path / "private.json") == 0o600


def test_the_image_cache_is_shared_whatever_the_umask(tmp_path, umask):
    umask(0o077)
    images = ClassImages(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([1, 1]), ["a", "b"])
    cached_class_images(tmp_path, "toy-train-2px", "0123", lambda: images)
    assert mode(tmp_path / "toy-train-2px-0123.pt") == 0o644


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "last.ckpt"
    save_torch_atomic({"epoch": 1}, target)
    with pytest.raises((AttributeError, TypeError, pickle.PicklingError)):  # what torch.save raises for a lambda
        save_torch_atomic({"epoch": 2, "unpicklable": lambda: None}, target)
    assert torch.load(target, weights_only=True) == {"epoch": 1}
    write_text_atomic(tmp_path / "note.txt", "first ünïcode\n")
    with pytest.raises(TypeError):
        write_text_atomic(tmp_path / "note.txt", b"bytes are not text")
    assert (tmp_path / "note.txt").read_text(encoding="utf-8") == "first ünïcode\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt", "note.txt"]
