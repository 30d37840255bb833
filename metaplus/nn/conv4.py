"""Conv-4, the standard few-shot backbone (Vinyals et al. 2016; MAML; MAML++).

Four blocks of 3x3 conv (padding 1) + batch norm + ReLU (or leaky ReLU, as MAML++) + 2x2 max-pool
(computed pool-then-activation, the same result: see ConvBlock),
then a linear ``head``. The head's input size is derived from ``input_shape``: each block keeps the
spatial size through the padded conv and halves it (floor) in the pool, so 28x28 ends at 1x1 and
84x84 at 5x5. Batch norm is :class:`PerStepBatchNorm2d`, so the inner-step index ``step`` reaches
it and MAML++'s per-step BN works without this module knowing about it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaplus.errors import check, check_choice, check_image_shape, check_int
from metaplus.nn.batchnorm import PerStepBatchNorm2d
from metaplus.nn.init import INIT_SCHEMES, initialise

ACTIVATIONS = {"relu": F.relu, "leaky_relu": F.leaky_relu}
#: Activations that never decrease (a <= b implies f(a) <= f(b), in floating point too): for these a
#: max-pool and the activation commute, max(f(a), f(b)) = f(max(a, b)).
MONOTONE_ACTIVATIONS = frozenset({"relu", "leaky_relu"})


#: ``channels_last: auto`` turns the channels-last layout on from this image side up (see
#: :func:`channels_last_pays`; the figures are in bench/results/kernels.md).
CHANNELS_LAST_MIN_SIDE = 32


def channels_last_pays(input_shape: Sequence[int]) -> bool:
    """Whether channels-last convolutions are faster for images of ``input_shape`` (C, H, W). Measured
    on a MAML++ meta-iteration on the CPU (oneDNN, 1 thread; bench/kernels.py channels_last), CPU time
    channels-last / NCHW: 0.72 at 32x32, 0.77 at 56x56, 0.82, 0.83 and 1.05 in three runs at 84x84;
    at 28x28 (Omniglot, 1 channel) 0.92 and 1.04: no gain established, so it stays NCHW below 32."""
    return min(input_shape[1:]) >= CHANNELS_LAST_MIN_SIDE


class ConvBlock(nn.Module):
    """3x3 conv -> per-step BN -> activation -> 2x2 max-pool, computed as conv -> BN -> pool ->
    activation when the activation is monotone (``pool_first``): the same outputs, with the
    activation and its backward on a quarter of the elements. Batch norm stays before the pool: its
    affine weight may be negative, and it does not commute with a max.

    The gradients are the same as well: the pool routes each window's gradient to its largest input,
    which is also the element whose activation is largest. (The one exception needs two different
    negative inputs of one window whose leaky-ReLU products round to the same float: the gradient
    then reaches the other, equal-valued element.) Bit for bit in the NCHW layout; with
    ``channels_last`` the second-order meta-gradients of the two orders agree to rounding (~1e-7)."""

    def __init__(self, in_channels: int, out_channels: int, activation: str):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm = PerStepBatchNorm2d(out_channels)
        self.activation = activation  # a name, not a function: keeps the module picklable
        self.pool_first = activation in MONOTONE_ACTIVATIONS  # an attribute: no parameter name changes

    def forward(self, x: Tensor, step: int = 0) -> Tensor:
        x = self.norm(self.conv(x), step=step)
        if self.pool_first:
            return ACTIVATIONS[self.activation](F.max_pool2d(x, kernel_size=2, stride=2))
        return F.max_pool2d(ACTIVATIONS[self.activation](x), kernel_size=2, stride=2)


class Conv4(nn.Module):
    """Four conv blocks and a linear head; ``forward(x, step=0)`` with ``x`` of shape (B, *input_shape)."""

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        output_dim: int = 5,
        filters: int = 64,
        blocks: int = 4,
        activation: str = "relu",
        init: str = "default",
        channels_last: bool | str = "auto",
    ):
        super().__init__()
        check_image_shape("input_shape", input_shape)
        check_int("output_dim", output_dim, 1)
        check_int("filters", filters, 1)
        check_int("blocks", blocks, 1)
        check_choice("activation", activation, set(ACTIVATIONS))
        check_choice("init", init, set(INIT_SCHEMES))
        check("channels_last", channels_last, channels_last in (True, False, "auto"), "auto, true or false")
        channels, height, width = input_shape
        for _ in range(blocks):  # padded 3x3 conv keeps the size; the 2x2 pool floors it by half
            height, width = height // 2, width // 2
        check(
            "input_shape",
            list(input_shape),
            height > 0 and width > 0,
            f"at least {2**blocks}x{2**blocks} pixels for {blocks} pooling blocks",
        )
        self.input_shape = tuple(input_shape)
        self.blocks = nn.ModuleList(
            ConvBlock(channels if i == 0 else filters, filters, activation) for i in range(blocks)
        )
        self.head = nn.Linear(filters * height * width, output_dim)
        initialise(self, init)
        # A plain attribute, not a buffer: checkpoints keep their keys, and either layout loads them.
        self.channels_last = channels_last_pays(input_shape) if channels_last == "auto" else channels_last

    def forward(self, x: Tensor, step: int = 0) -> Tensor:
        # Under torch.func transforms (algo.engine=batched, the batched ensemble: vmap, with grad inside
        # or outside it) a tensor has no layout of its own to set (torch raises), so those paths keep
        # torch's default layout. Any transform level counts: inside grad(vmap(...)) the input is a
        # grad-level wrapper, not itself a batched tensor.
        if self.channels_last and torch._C._functorch.maybe_current_level() is None:
            # The input alone decides: the convolutions (oneDNN on the CPU) then run and return
            # channels-last, batch norm, pooling and activations keep the layout, and the weights,
            # the fast weights of an inner step included, need no conversion.
            x = x.contiguous(memory_format=torch.channels_last)
        for block in self.blocks:
            x = block(x, step=step)
        return self.head(x.flatten(1))
