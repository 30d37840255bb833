"""ResNet-12, the few-shot literature's residual backbone (TADAM, MetaOptNet, ProtoMAML, UNICORN-MAML).

Four residual blocks; each is three 3x3 convs (padding 1, no bias: batch norm follows) with batch
norm and leaky ReLU (slope 0.1) between them, a shortcut of 1x1 conv + batch norm added before the
last leaky ReLU, then a 2x2 max-pool. Widths default to 64-160-320-640 (MetaOptNet's). After the
blocks the feature map is averaged over space (``pool: avg``, the common choice: 640 features
whatever the image size) or flattened (``pool: flatten``, 640 x 5 x 5 at 84x84); a linear ``head``
classifies. Each block's spatial size is floored by half in its pool, so 84 -> 42 -> 21 -> 10 -> 5
and 32 -> 16 -> 8 -> 4 -> 2.

Every batch norm is :class:`PerStepBatchNorm2d` and receives ``step``, so MAML++'s per-step BN
(BNRS/BNWB) works as on Conv-4. Every linear map is an ``nn.Conv2d``/``nn.Linear`` that ``forward``
calls (never reads a weight directly), so T-nets' transformations and MT-nets' masks
(:mod:`metaplus.nn.transform`) wrap them as they wrap Conv-4's, shortcut convs included.

DropBlock (Ghiasi et al. 2018), as MetaOptNet uses it: off by default (``dropblock_rate: 0``); with a
rate > 0 it drops ``dropblock_size`` x ``dropblock_size`` squares of each feature map after the pool of
the last two blocks (the blocks whose maps are large enough for a square), in training only. The
drop probability is the rate itself from the first step (MetaOptNet ramps it up over training).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from metaplus.errors import check, check_choice, check_image_shape, check_int
from metaplus.nn.batchnorm import PerStepBatchNorm2d

POOLS = ("avg", "flatten")
LEAK = 0.1  # leaky ReLU slope of every ResNet-12 in the few-shot literature


def drop_block(x: Tensor, rate: float, size: int) -> Tensor:
    """DropBlock: zero ``size`` x ``size`` squares so that about ``rate`` of the units are dropped,
    then rescale the kept units so the expected sum is unchanged."""
    height, width = x.shape[-2:]
    size = min(size, height, width)
    valid = (height - size + 1) * (width - size + 1)
    gamma = rate * height * width / (size * size * valid)  # seed probability, as in the paper
    seeds = torch.zeros_like(x)
    # Seeds only where a whole square fits, so every dropped square lies inside the map.
    top, left = size // 2, size // 2
    seeds[..., top : top + height - size + 1, left : left + width - size + 1] = torch.bernoulli(
        torch.full((*x.shape[:-2], height - size + 1, width - size + 1), gamma, dtype=x.dtype, device=x.device)
    )
    dropped = F.max_pool2d(seeds, kernel_size=size, stride=1, padding=size // 2)
    if size % 2 == 0:  # an even kernel with padding size/2 gives one extra row and column
        dropped = dropped[..., :height, :width]
    keep = 1.0 - dropped
    return x * keep * (keep.numel() / keep.sum().clamp(min=1.0))


class ResidualBlock(nn.Module):
    """3 x (3x3 conv -> per-step BN), leaky ReLU between, + (1x1 conv -> BN) shortcut -> leaky ReLU -> max-pool."""

    def __init__(self, in_channels: int, out_channels: int, dropblock_rate: float = 0.0, dropblock_size: int = 5):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm1 = PerStepBatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = PerStepBatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm3 = PerStepBatchNorm2d(out_channels)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.shortcut_norm = PerStepBatchNorm2d(out_channels)
        self.dropblock_rate, self.dropblock_size = dropblock_rate, dropblock_size

    @property
    def draws_random_numbers(self) -> bool:
        """Whether a training forward draws from the global generator (DropBlock's masks): tasks then
        cannot be trained on worker threads (:mod:`metaplus.algorithms.task_workers`)."""
        return self.dropblock_rate > 0

    def forward(self, x: Tensor, step: int = 0) -> Tensor:
        out = F.leaky_relu(self.norm1(self.conv1(x), step=step), LEAK)
        out = F.leaky_relu(self.norm2(self.conv2(out), step=step), LEAK)
        out = self.norm3(self.conv3(out), step=step)
        out = F.leaky_relu(out + self.shortcut_norm(self.shortcut(x), step=step), LEAK)
        out = F.max_pool2d(out, kernel_size=2, stride=2)
        if self.training and self.dropblock_rate > 0:
            out = drop_block(out, self.dropblock_rate, self.dropblock_size)
        return out


class ResNet12(nn.Module):
    """Four residual blocks and a linear head; ``forward(x, step=0)`` with ``x`` of shape (B, *input_shape)."""

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 84, 84),
        output_dim: int = 5,
        widths: Sequence[int] = (64, 160, 320, 640),
        pool: str = "avg",
        dropblock_rate: float = 0.0,
        dropblock_size: int = 5,
    ):
        super().__init__()
        check_image_shape("input_shape", input_shape)
        check_int("output_dim", output_dim, 1)
        check(
            "widths",
            widths,
            len(widths) >= 1 and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths),
            "a list of positive integers (one per block)",
        )
        check_choice("pool", pool, set(POOLS))
        check(
            "dropblock_rate",
            dropblock_rate,
            isinstance(dropblock_rate, (int, float))
            and not isinstance(dropblock_rate, bool)
            and 0 <= dropblock_rate < 1,
            "a number in [0, 1)",
        )
        check_int("dropblock_size", dropblock_size, 1)
        channels, height, width = input_shape
        for _ in widths:  # padded 3x3 convs keep the size; the 2x2 pool floors it by half
            height, width = height // 2, width // 2
        check(
            "input_shape",
            list(input_shape),
            height > 0 and width > 0,
            f"at least {2 ** len(widths)}x{2 ** len(widths)} pixels for {len(widths)} pooling blocks",
        )
        self.input_shape, self.pool = tuple(input_shape), pool
        ins = [channels, *widths[:-1]]
        # DropBlock in the last two blocks only (MetaOptNet): earlier maps are large and dropping
        # squares there mostly removes texture the later blocks need.
        with_dropblock = {i for i in range(len(widths)) if i >= len(widths) - 2}
        self.blocks = nn.ModuleList(
            ResidualBlock(i_c, o_c, dropblock_rate if i in with_dropblock else 0.0, dropblock_size)
            for i, (i_c, o_c) in enumerate(zip(ins, widths))
        )
        features = widths[-1] if pool == "avg" else widths[-1] * height * width
        self.head = nn.Linear(features, output_dim)

    def forward(self, x: Tensor, step: int = 0) -> Tensor:
        for block in self.blocks:
            x = block(x, step=step)
        x = x.mean(dim=(2, 3)) if self.pool == "avg" else x.flatten(1)
        return self.head(x)
