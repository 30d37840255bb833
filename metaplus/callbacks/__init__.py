"""Lightning callbacks of metaplus (added through the ``callbacks`` config group); the next commit
splits :mod:`metaplus.callbacks.divergence` into one module per concept."""
from metaplus.callbacks.divergence import *  # noqa: F401,F403
from metaplus.callbacks.divergence import checkpoint_damage, collect_rng_states, restore_rng_states  # noqa: F401
