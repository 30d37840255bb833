"""Inner-loop engines, chosen by ``algo.engine``:
- ``l2l`` (default): learn2learn clone/adapt, one task at a time (memory flat in the meta-batch);
- ``batched``: torch.func, the tasks of a meta-batch vmapped in chunks of ``algo.chunk_size``
  (for GPUs, where one-task-at-a-time Conv-4 is launch-bound)."""

from metaplus.errors import ConfigError, check_choice
from metaplus.inner.batched import BatchedAdapt
from metaplus.inner.clone_adapt import CloneAdapt, gradient_step, sgd
from metaplus.inner.learned_rates import LearnedRates, parameter_key

ENGINES = ("l2l", "batched")


def make_engine(engine: str = "l2l", chunk_size: int | None = None) -> CloneAdapt:
    """The engine named by ``algo.engine``; ``chunk_size`` belongs to the batched engine only."""
    check_choice("engine", engine, set(ENGINES))
    if engine == "l2l":
        if chunk_size is not None:
            raise ConfigError(
                "chunk_size",
                f"{chunk_size!r} is invalid: only algo.engine=batched takes a chunk size (leave it null for l2l)",
            )
        return CloneAdapt()
    return BatchedAdapt(chunk_size)


__all__ = [
    "BatchedAdapt",
    "CloneAdapt",
    "ENGINES",
    "LearnedRates",
    "gradient_step",
    "make_engine",
    "parameter_key",
    "sgd",
]
