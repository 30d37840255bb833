"""Strided Conv-4: the Omniglot network of dragen1860/MAML-Pytorch (omniglot_train.py's ``config``), so
that metaplus can train the same network as that reference (bench/parity.py, ``maml_omniglot_dragen``).

Unlike :class:`metaplus.nn.Conv4` (padded 3x3 conv, BN, activation, 2x2 max-pool), each block is an
unpadded convolution, then ReLU, then batch norm, and there is no pooling: the first ``blocks - 1``
convolutions are 3x3 with stride 2, the last is 2x2 with stride 1 (28x28 -> 13 -> 6 -> 2 -> 1, so 64
features reach the linear ``head``). Batch norm is :class:`PerStepBatchNorm2d`, so the algorithms'
BN switches (bn_stats, MAML++'s per-step sets, adapt_bn_affine) work as with Conv-4.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from metaplus.errors import check, check_choice, check_image_shape, check_int
from metaplus.nn.batchnorm import PerStepBatchNorm2d
from metaplus.nn.init import INIT_SCHEMES, initialise

# kaiming_normal: the reference's Learner (learner.py): torch.nn.init.kaiming_normal_ with its defaults
# (fan_in, ReLU gain sqrt(2)) on every conv and linear weight, zero biases; BN weight 1, bias 0.
STRIDED_INIT_SCHEMES = (*INIT_SCHEMES, "kaiming_normal")


class StridedBlock(nn.Module):
    """Unpadded conv -> ReLU -> per-step BN (the reference's order: ReLU before BN)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel_size, stride=stride, padding=0)
        self.norm = PerStepBatchNorm2d(out_channels)

    def forward(self, x: Tensor, step: int = 0) -> Tensor:
        return self.norm(F.relu(self.conv(x)), step=step)


def block_geometry(blocks: int) -> list[tuple[int, int]]:
    """(kernel, stride) of each block: 3x3 stride 2, the last 2x2 stride 1."""
    return [(3, 2)] * (blocks - 1) + [(2, 1)]


class StridedConv4(nn.Module):
    """``blocks`` strided conv blocks and a linear head; ``forward(x, step=0)``, ``x`` of shape (B, *input_shape)."""

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        output_dim: int = 5,
        filters: int = 64,
        blocks: int = 4,
        init: str = "kaiming_normal",
    ):
        super().__init__()
        check_image_shape("input_shape", input_shape)
        check_int("output_dim", output_dim, 1)
        check_int("filters", filters, 1)
        check_int("blocks", blocks, 1)
        check_choice("init", init, set(STRIDED_INIT_SCHEMES))
        channels, height, width = input_shape
        for kernel, stride in block_geometry(blocks):  # an unpadded conv: (size - kernel) // stride + 1
            height, width = (height - kernel) // stride + 1, (width - kernel) // stride + 1
        check(
            "input_shape",
            list(input_shape),
            height > 0 and width > 0,
            f"too small for {blocks} unpadded strided blocks (28x28 ends at 1x1 with 4)",
        )
        self.input_shape = tuple(input_shape)
        self.blocks = nn.ModuleList(
            StridedBlock(channels if i == 0 else filters, filters, kernel, stride)
            for i, (kernel, stride) in enumerate(block_geometry(blocks))
        )
        self.head = nn.Linear(filters * height * width, output_dim)
        if init == "kaiming_normal":
            for module in self.modules():
                if isinstance(module, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight)
                    nn.init.zeros_(module.bias)
        else:
            initialise(self, init)

    def forward(self, x: Tensor, step: int = 0) -> Tensor:
        for block in self.blocks:
            x = block(x, step=step)
        return self.head(x.flatten(1))
