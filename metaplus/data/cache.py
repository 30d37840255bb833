"""The disk cache of decoded images: decode a split once, load it in every later run.

Decoding JPEG/PNG files is the slow part of an image source, so it happens once:
:func:`cached_class_images` stores a split's :class:`ClassImages` under ``cache_dir`` in a file whose
name holds a digest of the source files' identity (names, sizes, modification times) and of the
decoding settings, so a changed source or image size gets a new cache and an unchanged one is reused
by every run (and every worktree sharing ``cache_dir``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from metaplus.atomic import save_torch_atomic
from metaplus.data.class_images import ClassImages, decode_classes

log = logging.getLogger("metaplus")

# Bump when the cache layout or the decoding changes, so old caches are not reused.
CACHE_FORMAT = 1


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


def cache_prefix(dataset: str, what: str, image_size: int, root: Path, **options: object) -> str:
    """Cache file name stem: readable parts, plus a digest of the root and options so that two copies
    of a dataset (or a subset used by tests) never replace each other's cache."""
    digest = cache_key(root=str(Path(root).resolve()), **options)[:8]
    return f"{dataset}-{what}-{image_size}px-{digest}"


def cached_class_images(
    cache_dir: str | Path | None,
    prefix: str,
    key: str,
    build: Callable[[], ClassImages],
    shape: Callable[[], tuple[int, int, int, int]] | None = None,
) -> ClassImages:
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
                return ClassImages(state["images"], state["counts"], list(state["class_names"]))
        except Exception:  # a truncated or foreign file: rebuild it below
            pass
    announce_decoding(prefix, path, shape() if shape is not None else None)
    images = build()
    if path is None:
        return images
    cache_dir = path.parent
    cache_dir.mkdir(parents=True, exist_ok=True)
    state = {
        "format": CACHE_FORMAT,
        "images": images.images,
        "counts": images.counts,
        "class_names": images.class_names,
    }
    save_torch_atomic(state, path, mode=0o644)  # the cache is meant to be shared, whatever the umask
    for stale in cache_dir.glob(f"{prefix}-*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    return images


def load_image_files(
    dataset: str,
    what: str,
    classes: Sequence[tuple[str, Sequence[Path]]],
    root: Path,
    mode: str,
    image_size: int,
    cache_dir: str | Path | None,
    **options: object,
) -> ClassImages:
    """Decode ``[(class_name, [file, ...]), ...]`` once; later calls with the same files load the cache."""
    files = [f for _, paths in classes for f in paths]
    key = cache_key(
        mode=mode,
        image_size=image_size,
        classes=[name for name, _ in classes],
        files=file_identity(files, relative_to=root),
    )
    prefix = cache_prefix(dataset, what, image_size, root, mode=mode, **options)
    return cached_class_images(
        cache_dir,
        prefix,
        key,
        lambda: decode_classes(classes, lambda p: p, str, mode, image_size),
        shape=lambda: (len(files), len(mode), image_size, image_size),
    )


def announce_decoding(prefix: str, path: Path | None, shape: Sequence[int] | None) -> None:
    """One line before a (long) first decode: what, where to, and how big, e.g. ``decoding
    miniimagenet-train-84px-1a2b3c4d: 38,400 images of 3x84x84 (~813 MB) into .cache/....pt, once: later
    runs load it``."""
    size = ""
    if shape is not None:
        count, per_image = int(shape[0]), shape[1:]
        size = (
            f": {count:,} images of {'x'.join(str(int(d)) for d in per_image)} "
            f"(~{readable_bytes(count * math.prod(int(d) for d in per_image))})"
        )
    where = (
        f" into {path}, once: later runs load it"
        if path is not None
        else " in memory only (no disk cache: data.cache_dir is null), again in every run"
    )
    log.info("decoding %s%s%s", prefix, size, where)


def readable_bytes(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
