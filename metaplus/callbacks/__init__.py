"""Lightning callbacks of metaplus (added through the ``callbacks`` config group), one module per concept.

Checkpointing: :mod:`~metaplus.callbacks.run_checkpoint` (the top-k files, recorded relative to their
folder), :mod:`~metaplus.callbacks.rng_state` (exact resume), :mod:`~metaplus.callbacks.checkpoint_io`
(atomic writes, damaged-file check), :mod:`~metaplus.callbacks.preemption` (``last.ckpt`` on SIGTERM/SIGUSR2).
Monitoring: :mod:`~metaplus.callbacks.wall_clock` (``time/train_s``), :mod:`~metaplus.callbacks.divergence`
(loss ceiling, chance level).

The classes are re-exported here because configs name them: ``_target_: metaplus.callbacks.Divergence`` in
a user's config or in an older run's saved config keeps working.
"""

from metaplus.callbacks.checkpoint_io import AtomicCheckpointIO
from metaplus.callbacks.divergence import Divergence, DivergenceError
from metaplus.callbacks.preemption import PreemptionCheckpoint
from metaplus.callbacks.rng_state import RNGStateCheckpoint
from metaplus.callbacks.run_checkpoint import RunCheckpoint
from metaplus.callbacks.wall_clock import WallClock

__all__ = [
    "AtomicCheckpointIO",
    "Divergence",
    "DivergenceError",
    "PreemptionCheckpoint",
    "RNGStateCheckpoint",
    "RunCheckpoint",
    "WallClock",
]
