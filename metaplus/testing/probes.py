"""Test-only Lightning callbacks, injected through the config (``+callbacks.probe._target_=...``) so
that they also run inside the processes Lightning's DDP launcher starts."""

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


class FirstStepProbe(Callback):
    """Saves, per rank, the task indices of the first training batch and the meta-gradient that the
    optimizer applied (after DDP's all-reduce and the learner's clipping, which runs in the module's
    ``on_before_optimizer_step``, after the callbacks' hook: hence read at the end of the batch)."""

    def __init__(self, path: str):
        self.path, self.indices = Path(path), None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == 0 and self.indices is None:
            self.indices = batch.index.tolist()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != 1:  # the first step's optimizer.step() has run; .grad is zeroed next step
            return
        self.path.mkdir(parents=True, exist_ok=True)
        grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}
        torch.save(
            {"indices": self.indices, "grads": grads, "world_size": trainer.world_size},
            self.path / f"rank{trainer.global_rank}.pt",
        )


class Pace(Callback):
    """Slows training down (``seconds`` per step) and writes the number of finished steps to
    ``<output_dir>/steps.txt``, so a test can signal a run at a known point of an epoch."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        import time

        time.sleep(self.seconds)
        Path(trainer.default_root_dir, "steps.txt").write_text(str(trainer.global_step))


class EvalResultsProbe(Callback):
    """Saves, per rank, what results.json gets from each evaluation, by stage: its logged metrics and
    the learner's ``adaptation_curves``."""

    def __init__(self, path: str):
        self.path, self.results = Path(path), {}

    def save(self, trainer, pl_module, stage: str):
        logged = {key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith(f"{stage}/")}
        self.results[stage] = {**logged, **pl_module.adaptation_curves.get(stage, {})}
        self.path.mkdir(parents=True, exist_ok=True)
        torch.save(dict(self.results), self.path / f"rank{trainer.global_rank}.pt")

    def on_test_end(self, trainer, pl_module):
        self.save(trainer, pl_module, "test")

    def on_validation_end(self, trainer, pl_module):
        self.save(trainer, pl_module, "val")
