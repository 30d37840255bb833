"""``TaskBatch`` through the DataLoader's pin-memory path (issue 24): ``pin_memory=True`` must pin it."""

from __future__ import annotations

import torch
from torch.utils.data._utils.pin_memory import pin_memory as loader_pin_memory

from metaplus.data.episodes import TaskBatch


def a_batch(with_classes: bool) -> TaskBatch:
    classes = torch.arange(6).view(2, 3) if with_classes else None
    return TaskBatch(
        torch.rand(2, 3, 1, 4, 4),
        torch.zeros(2, 3, dtype=torch.long),
        torch.rand(2, 3, 1, 4, 4),
        torch.ones(2, 3, dtype=torch.long),
        torch.arange(2),
        support_classes=classes,
        query_classes=classes,
    )


def test_the_loader_s_pin_memory_path_pins_every_tensor_of_a_task_batch(monkeypatch):
    """No GPU here, so ``Tensor.pin_memory`` is replaced by a stand-in that marks the copies it makes;
    the loader's own pinning function (what ``DataLoader(pin_memory=True)`` runs) must reach each one."""
    pinned = set()

    def fake_pin(self, *args, **kwargs):
        copy = self.clone()
        pinned.add(id(copy))
        return copy

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    for with_classes in (True, False):
        pinned.clear()
        batch = a_batch(with_classes)
        out = loader_pin_memory(batch)
        assert isinstance(out, TaskBatch)
        tensors = {
            name: getattr(out, name)
            for name in ("support_x", "support_y", "query_x", "query_y", "index", "support_classes", "query_classes")
        }
        for name, tensor in tensors.items():
            if tensor is None:
                assert not with_classes and name.endswith("classes")
                continue
            assert id(tensor) in pinned, f"{name} was not pinned"
            assert torch.equal(tensor, getattr(batch, name))
