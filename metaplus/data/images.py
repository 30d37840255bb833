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

import hashlib
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from metaplus.config import check, check_int
from metaplus.data.episodes import Task

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
def decode_image(data: bytes | Path, name: str, mode: str, size: int, invert: bool = False) -> Tensor:
    """One image as uint8 ``[C, size, size]`` (mode ``L``: C=1, ``RGB``: C=3).

    ``data`` is the file's bytes (archive members) or its path; ``name`` is what an error reports.
    Resampling uses Lanczos, as the MAML reference code does for Omniglot.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image = image.convert(mode)
            if image.size != (size, size):
                image = image.resize((size, size), Image.LANCZOS)
            array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise CorruptImageError(f"cannot decode image {name}: {err}. The file is damaged or not an image; "
                                f"replace it (re-download or re-extract the dataset).") from None
    channels = len(mode)
    array = array.view(size, size, channels).permute(2, 0, 1).contiguous()
    return 255 - array if invert else array


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
                        build: Callable[[], ClassImages]) -> ClassImages:
    """Load ``<cache_dir>/<prefix>-<key>.pt`` or build it (then write it atomically).

    ``cache_dir=None`` disables the disk cache (the images are decoded for this process only). Older
    caches with the same prefix are removed once the new one is written: they belong to a source
    that has since changed.
    """
    if cache_dir is None:
        return build()
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{prefix}-{key}.pt"
    if path.is_file():
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if state.get("format") == CACHE_FORMAT:
                return ClassImages.from_state(state)
        except Exception:  # a truncated or foreign file: rebuild it below
            pass
    images = build()
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(images.to_state(), path)
    for stale in cache_dir.glob(f"{prefix}-*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return images


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
                               lambda: decode_classes(classes, lambda p: p, str, mode, image_size))


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
    ``(x / 255 - mean) / std`` per channel.
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
        # x_float = x_uint8 * scale + shift, as whole [C, H, W] planes: in-place ops on equal shapes
        # are several times faster than broadcasting a per-channel [C, 1, 1] on the CPU.
        plane = data.images.shape[1:]
        scale = 1.0 / (torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255.0)
        shift = -torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255.0 * scale
        self.scale, self.shift = scale.expand(plane).contiguous(), shift.expand(plane).contiguous()

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    def sample(self, generator: torch.Generator) -> Task:
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
            support_x=self.images_at(support), support_y=labels.expand_as(support).flatten(),
            query_x=self.images_at(query), query_y=labels.expand_as(query).flatten(),
            support_classes=classes[:, None].expand_as(support).flatten(),
            query_classes=classes[:, None].expand_as(query).flatten(),
        )

    def images_at(self, rows: Tensor) -> Tensor:
        """Normalised float images of ``rows`` (any shape; flattened, class-major)."""
        pixels = self.data.images.index_select(0, rows.flatten())
        return pixels.float().mul_(self.scale).add_(self.shift)


def seeded_permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
