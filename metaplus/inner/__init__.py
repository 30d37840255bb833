"""Inner-loop engines. Today: learn2learn clone/adapt, one task at a time (memory flat in the
meta-batch; vmap over tasks was slower on CPU and wrong for nn.BatchNorm second-order gradients)."""
from metaplus.inner.clone_adapt import CloneAdapt, gradient_step, sgd

__all__ = ["CloneAdapt", "gradient_step", "sgd"]
