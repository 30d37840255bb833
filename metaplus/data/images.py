"""Shared machinery of the image sources: decode once, cache as uint8, draw episodes from memory.

Every image dataset (Omniglot, mini-ImageNet, any folder of class folders) ends up as one
:class:`ClassImages`: all images of a split in one uint8 tensor ``[N, C, H, W]``, grouped by class
(class ``c`` owns rows ``offsets[c] : offsets[c] + counts[c]``). Decoding JPEG/PNG files is the
slow part, so it happens once: :func:`cached_class_images` stores the decoded tensor under
``cache_dir`` in a file whose name holds a digest of the source files' identity (names, sizes,
modification times) and of the decoding settings, so a changed source or image size gets a new
cache and an unchanged one is reused by every run. :class:`ImageEpisodes` then samples N-way K-shot
episodes with a few tensor indexing operations and no file access.
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaplus.config import check, check_int
from metaplus.data.episodes import Task

log = logging.getLogger("metaplus")

# Bump when the cache layout or the decoding changes, so old caches are not reused.
CACHE_FORMAT = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset (or one split of it) is not where the config says; the message says how to get it."""


class CorruptDatasetError(ValueError):
    """Dataset files that exist but cannot be read (a damaged archive, an empty folder, ...)."""


class CorruptImageError(CorruptDatasetError):
    """An image file that cannot be decoded; the message names the file."""


# -- decoding --------------------------------------------------------------------------------------
def decode_image(data: bytes | Path | Image.Image, name: str, mode: str, size: int | None,
                 invert: bool = False) -> Tensor:
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
        raise CorruptImageError(f"cannot decode image {name}: {err}. The file is damaged or not an image; "
                                f"replace it (re-download or re-extract the dataset).") from None
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
    return F.interpolate(pixels.float(), size=(size, size), mode="bilinear", antialias=True,
                         align_corners=False).round_().clamp_(0, 255).to(torch.uint8)


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


RESAMPLING = ("lanczos", "bilinear")


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
        channels = len(self.mode)
        for key, values in (("mean", self.mean), ("std", self.std)):
            check(f"source.{key}", values, len(values) in (1, channels), f"a list of 1 or {channels} numbers")
        check("source.std", self.std, all(s > 0 for s in self.std), "positive numbers")
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
            check("images", images.dtype, images.dtype == torch.uint8,
                  "uint8 pixels decoded by this preprocessing (or PIL images / paths)")
            return self.normalise(images if images.dim() == 4 else images.unsqueeze(0))
        if isinstance(images, (bytes, str, Path, Image.Image)):
            images = [images]
        return self.normalise(torch.stack([self.decode(image) for image in images]))


@dataclass
class ClassImages:
    """All images of one split, grouped by class: ``images[offsets[c] : offsets[c] + counts[c]]``."""

    images: Tensor            # uint8 [N, C, H, W]
    counts: Tensor            # long [num_classes]
    class_names: list[str]

    @property
    def offsets(self) -> Tensor:
        return torch.cumsum(self.counts, 0) - self.counts

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def of_class(self, c: int) -> Tensor:
        start = int(self.offsets[c])
        return self.images[start : start + int(self.counts[c])]

    def select(self, classes: Sequence[int]) -> "ClassImages":
        """A new set holding only ``classes`` (in that order)."""
        parts = [self.of_class(c) for c in classes]
        return ClassImages(torch.cat(parts) if parts else self.images[:0], self.counts[list(classes)].clone(),
                           [self.class_names[c] for c in classes])

    def to_state(self) -> dict:
        return {"format": CACHE_FORMAT, "images": self.images, "counts": self.counts, "class_names": self.class_names}

    @classmethod
    def from_state(cls, state: dict) -> "ClassImages":
        return cls(state["images"], state["counts"], list(state["class_names"]))


def decode_classes(classes: Sequence[tuple[str, Sequence[object]]], read: Callable[[object], bytes | Path],
                   describe: Callable[[object], str], mode: str, size: int, invert: bool = False) -> ClassImages:
    """Decode ``[(class_name, [item, ...]), ...]``; ``read(item)`` gives bytes or a path to decode."""
    channels = len(mode)
    total = sum(len(items) for _, items in classes)
    images = torch.empty(total, channels, size, size, dtype=torch.uint8)
    row = 0
    for _, items in classes:
        for item in items:
            images[row] = decode_image(read(item), describe(item), mode, size, invert)
            row += 1
    counts = torch.tensor([len(items) for _, items in classes], dtype=torch.long)
    return ClassImages(images, counts, [name for name, _ in classes])


# -- the disk cache --------------------------------------------------------------------------------
def file_identity(paths: Iterable[Path], relative_to: Path | None = None) -> list:
    """(name, size, mtime) of each file: cheap to compute, and changes whenever a file is replaced."""
    identity = []
    for path in paths:
        stat = path.stat()
        name = str(path.relative_to(relative_to)) if relative_to is not None else path.name
        identity.append((name, stat.st_size, stat.st_mtime_ns))
    return identity


def cache_key(**parts: object) -> str:
    payload = json.dumps({"format": CACHE_FORMAT, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cached_class_images(cache_dir: str | Path | None, prefix: str, key: str,
                        build: Callable[[], ClassImages],
                        shape: Callable[[], tuple[int, int, int, int]] | None = None) -> ClassImages:
    """Load ``<cache_dir>/<prefix>-<key>.pt`` or build it (then write it atomically).

    ``cache_dir=None`` disables the disk cache (the images are decoded for this process only). Older
    caches with the same prefix are removed once the new one is written: they belong to a source
    that has since changed. Before building, one log line says what is decoded, where it goes and
    how big it will be: ``shape()`` (called only then) gives the images tensor's ``[N, C, H, W]``.
    """
    path = None if cache_dir is None else Path(cache_dir) / f"{prefix}-{key}.pt"
    if path is not None and path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") == CACHE_FORMAT:
                return ClassImages.from_state(state)
        except Exception:  # a truncated or foreign file: rebuild it below
            pass
    announce_decoding(prefix, path, shape() if shape is not None else None)
    images = build()
    if path is None:
        return images
    cache_dir = path.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(images.to_state(), path)
    for stale in cache_dir.glob(f"{prefix}-*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return images


def announce_decoding(prefix: str, path: Path | None, shape: Sequence[int] | None) -> None:
    """One line before a (long) first decode: what, where to, and how big, e.g. ``decoding
    miniimagenet-train-84px-1a2b3c4d: 38,400 images of 3x84x84 (~813 MB) into .cache/....pt, once: later
    runs load it``."""
    size = ""
    if shape is not None:
        count, per_image = int(shape[0]), shape[1:]
        size = (f": {count:,} images of {'x'.join(str(int(d)) for d in per_image)} "
                f"(~{readable_bytes(count * math.prod(int(d) for d in per_image))})")
    where = (f" into {path}, once: later runs load it" if path is not None
             else " in memory only (no disk cache: data.cache_dir is null), again in every run")
    log.info("decoding %s%s%s", prefix, size, where)


def readable_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def atomic_torch_save(obj: object, path: Path) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cache_prefix(dataset: str, what: str, image_size: int, root: Path, **options: object) -> str:
    """Cache file name stem: readable parts, plus a digest of the root and options so that two copies
    of a dataset (or a subset used by tests) never replace each other's cache."""
    digest = cache_key(root=str(Path(root).resolve()), **options)[:8]
    return f"{dataset}-{what}-{image_size}px-{digest}"


def load_image_files(dataset: str, what: str, classes: Sequence[tuple[str, Sequence[Path]]], root: Path,
                     mode: str, image_size: int, cache_dir: str | Path | None, **options: object) -> ClassImages:
    """Decode ``[(class_name, [file, ...]), ...]`` once; later calls with the same files load the cache."""
    files = [f for _, paths in classes for f in paths]
    key = cache_key(mode=mode, image_size=image_size, classes=[name for name, _ in classes],
                    files=file_identity(files, relative_to=root))
    prefix = cache_prefix(dataset, what, image_size, root, mode=mode, **options)
    return cached_class_images(cache_dir, prefix, key,
                               lambda: decode_classes(classes, lambda p: p, str, mode, image_size),
                               shape=lambda: (len(files), len(mode), image_size, image_size))


def check_subset_limits(max_classes: int | None, max_images_per_class: int | None) -> None:
    """``source.max_classes`` / ``source.max_images_per_class`` (a subset for benchmarks and tests)."""
    for key, value in (("max_classes", max_classes), ("max_images_per_class", max_images_per_class)):
        check(f"source.{key}", value, value is None or (isinstance(value, int) and value >= 1), "null or an integer >= 1")


def folder_classes(folder: Path, max_classes: int | None = None,
                   max_images_per_class: int | None = None) -> list[tuple[str, list[Path]]]:
    """``folder/<class>/<image>`` -> [(class, [images])] sorted by name, optionally only the first ones."""
    classes = [(d.name, list_images(d)[:max_images_per_class]) for d in list_class_folders(folder)[:max_classes]]
    return [(name, files) for name, files in classes if files]


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files ignored)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


def list_class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


# -- episodes --------------------------------------------------------------------------------------
class ImageEpisodes:
    """N-way K-shot episodes drawn from a :class:`ClassImages` held in memory.

    ``sample`` picks ``ways`` distinct classes in random order (the order gives the episode labels
    0..ways-1), then ``shots + queries`` distinct images of each class: the first ``shots`` form the
    support set, the rest the query set (``queries`` is per class). Images become float tensors
    ``(x / 255 - mean) / std`` per channel. ``sample_pixels`` draws the same episode with its uint8
    pixels, 4x fewer bytes to move to a GPU, where ``normalise`` finishes it.
    """

    def __init__(self, data: ClassImages, ways: int, shots: int, queries: int,
                 mean: Sequence[float] = (0.0,), std: Sequence[float] = (1.0,), split: str = "train"):
        check_int("source.ways", ways, 2)
        check_int("source.shots", shots, 1)
        check_int("source.queries", queries, 1)
        channels = data.images.shape[1]
        for key, values in (("mean", mean), ("std", std)):
            check(f"source.{key}", values, len(values) in (1, channels), f"a list of 1 or {channels} numbers")
        check("source.std", std, all(s > 0 for s in std), "positive numbers")
        check("source.ways", ways, ways <= data.num_classes,
              f"at most the {data.num_classes} classes of the '{split}' split")
        per_class = shots + queries
        fewest = int(data.counts.min()) if data.num_classes else 0
        if fewest < per_class:
            poorest = data.class_names[int(data.counts.argmin())]
            check("source.shots", shots, False, f"such that shots + queries ({per_class}) <= the images of every class; "
                  f"class '{poorest}' of the '{split}' split has only {fewest}")
        self.data, self.ways, self.shots, self.queries, self.split = data, ways, shots, queries, split
        self.offsets, self.counts = data.offsets, data.counts
        self.max_count = int(data.counts.max())
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    def sample(self, generator: torch.Generator) -> Task:
        """An episode with float (normalised) images."""
        task = self.sample_pixels(generator)
        return replace(task, support_x=self.normalise(task.support_x), query_x=self.normalise(task.query_x))

    def normalise(self, pixels: Tensor) -> Tensor:
        """uint8 images of this source -> the float inputs the learner takes, on the pixels' device."""
        return normalise_pixels(pixels, self.mean, self.std)

    def sample_pixels(self, generator: torch.Generator) -> Task:
        """An episode with uint8 images (the same episode ``sample`` draws from this generator)."""
        ways, shots, per_class = self.ways, self.shots, self.shots + self.queries
        classes = torch.randperm(self.num_classes, generator=generator)[:ways]
        # Distinct examples per class in one shot: rank random keys, padding slots sort last.
        keys = torch.rand(ways, self.max_count, generator=generator)
        counts = self.counts[classes]
        if int(counts.min()) < self.max_count:
            keys.masked_fill_(torch.arange(self.max_count) >= counts[:, None], 2.0)
        picks = keys.argsort(dim=1)[:, :per_class] + self.offsets[classes][:, None]
        labels = torch.arange(ways)[:, None]
        support, query = picks[:, :shots], picks[:, shots:]
        return Task(
            support_x=self.pixels_at(support), support_y=labels.expand_as(support).flatten(),
            query_x=self.pixels_at(query), query_y=labels.expand_as(query).flatten(),
            support_classes=classes[:, None].expand_as(support).flatten(),
            query_classes=classes[:, None].expand_as(query).flatten(),
        )

    def pixels_at(self, rows: Tensor) -> Tensor:
        """uint8 images of ``rows`` (any shape; flattened, class-major)."""
        return self.data.images.index_select(0, rows.flatten())

    def images_at(self, rows: Tensor) -> Tensor:
        """Normalised float images of ``rows`` (any shape; flattened, class-major)."""
        return self.normalise(self.pixels_at(rows))


def seeded_permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
