"""Inner-loop engines, chosen by ``algo.engine``:
- ``l2l`` (default): learn2learn clone/adapt, one task at a time per thread (memory flat in the meta-batch);
- ``batched``: torch.func, the tasks of a meta-batch vmapped in chunks of ``algo.chunk_size``
  (for GPUs, where one-task-at-a-time Conv-4 is launch-bound);
- ``grouped``: Conv-4 only, the tasks of a chunk stacked on the channel axis and every convolution
  one ``groups=T`` convolution (:mod:`metaplus.inner.grouped`): on a CPU 13-20 % less time than
  ``l2l`` for small images (Omniglot, 5 inner steps, meta-batch >= 2), more for 84x84 images
  (bench/results/kernels.md section 6).
``algo.checkpoint_steps=true`` (MAML, MAML++) turns ``l2l`` into :class:`CheckpointedAdapt`, which
recomputes each inner step's activations in the meta-backward instead of keeping them."""

from metaplus.errors import ConfigError, check_choice
from metaplus.inner.batched import BatchedAdapt
from metaplus.inner.checkpointed import CheckpointedAdapt
from metaplus.inner.clone_adapt import CloneAdapt, gradient_step, sgd
from metaplus.inner.grouped import GroupedAdapt
from metaplus.inner.learned_rates import LearnedRates, parameter_key

ENGINES = ("l2l", "batched", "grouped")


def make_engine(engine: str = "l2l", chunk_size: int | None = None) -> CloneAdapt:
    """The engine named by ``algo.engine``; ``chunk_size`` belongs to the batched engines only."""
    check_choice("engine", engine, set(ENGINES))
    if engine == "l2l":
        if chunk_size is not None:
            raise ConfigError(
                "chunk_size",
                f"{chunk_size!r} is invalid: only algo.engine=batched|grouped takes a chunk size (leave it null for l2l)",
            )
        return CloneAdapt()
    return GroupedAdapt(chunk_size) if engine == "grouped" else BatchedAdapt(chunk_size)


def checkpointed_engine(engine: CloneAdapt) -> CheckpointedAdapt:
    """``algo.checkpoint_steps=true``: the default engine, recomputing each inner step in the
    meta-backward. Only the default engine can: the batched one vmaps whole adaptations (and a
    custom engine passed in code has its own inner loop)."""
    if type(engine) is not CloneAdapt:
        name = "batched" if getattr(engine, "batched", False) else f"a custom engine ({type(engine).__name__})"
        raise ConfigError(
            "checkpoint_steps",
            f"true is invalid with algo.engine={name}: only the default engine recomputes its inner "
            f"steps; use algo.engine=l2l or algo.checkpoint_steps=false",
        )
    return CheckpointedAdapt()


__all__ = [
    "BatchedAdapt",
    "CheckpointedAdapt",
    "CloneAdapt",
    "ENGINES",
    "GroupedAdapt",
    "LearnedRates",
    "checkpointed_engine",
    "gradient_step",
    "make_engine",
    "parameter_key",
    "sgd",
]
