"""What turns an image into a network input: decoding, resizing and per-channel normalisation.

:class:`Preprocessing` is the one description of a source's input pipeline: the sources decode their
cache and normalise their episodes with it, and ``metaplus.load(run).preprocess`` is it.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaplus.config import check, check_int
from metaplus.data.errors import CorruptImageError

RESAMPLING = ("lanczos", "bilinear")


def decode_image(
    data: bytes | Path | Image.Image, name: str, mode: str, size: int | None, invert: bool = False
) -> Tensor:
    """One image as uint8 ``[C, size, size]`` (mode ``L``: C=1, ``RGB``: C=3); ``size=None`` keeps
    the image's own height and width.

    ``data`` is the file's bytes (archive members), its path, or an already opened PIL image; ``name``
    is what an error reports. Resampling uses Lanczos, as the MAML reference code does for Omniglot.
    """
    try:
        if isinstance(data, Image.Image):
            array, (width, height) = _pixels(data, mode, size)
        else:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
                array, (width, height) = _pixels(image, mode, size)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(
            f"cannot decode image {name}: {err}. The file is damaged or not an image; "
            f"replace it (re-download or re-extract the dataset)."
        ) from None
    channels = len(mode)
    array = array.view(height, width, channels).permute(2, 0, 1).contiguous()
    return 255 - array if invert else array


def _pixels(image: Image.Image, mode: str, size: int | None) -> tuple[Tensor, tuple[int, int]]:
    image = image.convert(mode)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.LANCZOS)
    return torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8), image.size


def resize_bilinear(pixels: Tensor, size: int) -> Tensor:
    """uint8 ``[N, C, H, W]`` -> ``[N, C, size, size]``, bilinear with antialiasing, rounded: how the
    sources that start from arrays rather than image files (CIFAR's pickles) resize."""
    if pixels.shape[-2:] == (size, size):
        return pixels
    return (
        F.interpolate(pixels.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        .round_()
        .clamp_(0, 255)
        .to(torch.uint8)
    )


def normalisation(mean: Sequence[float], std: Sequence[float]) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` of shape ``[C or 1, 1, 1]`` with ``x_float = x_uint8 * scale + shift``,
    i.e. ``(x / 255 - mean) / std`` per channel: the one formula every image source uses."""
    scale = 1.0 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0)
    shift = -torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0 * scale
    return scale, shift


@functools.lru_cache(maxsize=64)
def _normalisation_on(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    # Made once per device: normalising a batch on a GPU then copies nothing from the host.
    scale, shift = normalisation(mean, std)
    return scale.to(device), shift.to(device)


def normalise_pixels(pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 ``[..., C, H, W]`` -> float32 ``(x / 255 - mean) / std`` per channel, on the pixels' own
    device: how every source's episodes become network inputs, on the CPU (``source.sample``) or
    after the uint8 batch reached the GPU (``EpisodicDataModule.on_after_batch_transfer``), bit for bit
    the same."""
    scale, shift = _normalisation_on(tuple(float(m) for m in mean), tuple(float(s) for s in std), pixels.device)
    return pixels.float().mul_(scale).add_(shift)


def check_mean_std(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    """``source.mean`` / ``source.std``: 1 or ``channels`` numbers each, ``std`` positive."""
    for key, values in (("mean", mean), ("std", std)):
        check(f"source.{key}", values, len(values) in (1, channels), f"a list of 1 or {channels} numbers")
    check("source.std", std, all(s > 0 for s in std), "positive numbers")


@dataclass(frozen=True)
class Preprocessing:
    """What turns an image into a network input, exactly as a source prepared its training data:
    decode to ``mode`` (``L`` grey / ``RGB``), resize to ``size`` squares (``resample``: ``lanczos``,
    PIL's, for sources read from image files; ``bilinear``, :func:`resize_bilinear`, for CIFAR's
    arrays), optionally invert (Omniglot: strokes 1, paper 0), then ``(x / 255 - mean) / std`` per
    channel.

    Every data source module defines a module-level ``preprocessing(...)`` taking (some of) its
    source's config keys (the one mechanism ``metaplus.load`` reads); image sources build this object
    with it and decode and normalise their data with it, and ``metaplus.load`` exposes the same object
    as ``learner.preprocess``. Calling it on one image or a list of images (PIL images, paths, or file
    bytes; or uint8 tensors ``[C, size, size]`` / ``[N, C, size, size]`` already decoded by it) gives
    a float tensor ``[N, C, size, size]``.
    """

    mode: str
    size: int
    invert: bool = False
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    resample: str = "lanczos"

    def __post_init__(self) -> None:
        # Keys named as the sources' config keys: a bad value reads ``data.source.std=...``.
        check("source.mode", self.mode, self.mode in ("L", "RGB"), "'L' or 'RGB'")
        check("source.resample", self.resample, self.resample in RESAMPLING, " or ".join(RESAMPLING))
        check_int("source.image_size", self.size, 1)
        check_mean_std(self.mean, self.std, len(self.mode))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))

    def decode(self, image: bytes | Path | str | Image.Image, name: str | None = None) -> Tensor:
        """uint8 ``[C, size, size]`` as stored in the source's cache."""
        if isinstance(image, str):
            image = Path(image)
        name = name or str(image if isinstance(image, Path) else type(image).__name__)
        if self.resample == "lanczos":
            return decode_image(image, name, self.mode, self.size, self.invert)
        pixels = resize_bilinear(decode_image(image, name, self.mode, None).unsqueeze(0), self.size)[0]
        return 255 - pixels if self.invert else pixels

    def normalise(self, pixels: Tensor) -> Tensor:
        """uint8 ``[..., C, H, W]`` -> float, as the episodes the learner was trained on."""
        return normalise_pixels(pixels, self.mean, self.std)

    def __call__(self, images) -> Tensor:
        if isinstance(images, Tensor):
            check(
                "images",
                images.dtype,
                images.dtype == torch.uint8,
                "uint8 pixels decoded by this preprocessing (or PIL images / paths)",
            )
            return self.normalise(images if images.dim() == 4 else images.unsqueeze(0))
        if isinstance(images, (bytes, str, Path, Image.Image)):
            images = [images]
        return self.normalise(torch.stack([self.decode(image) for image in images]))
