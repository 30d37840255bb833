"""Finding the images of a folder-per-class dataset: ``folder/<class>/<image>``.

Image files are recognised by torchvision's ``IMG_EXTENSIONS`` (plus GIF, which PIL decodes and
these sources have always read) through its ``has_file_allowed_extension``. Class folders are not
found with torchvision's ``find_classes``: it counts hidden folders as classes, and data.root holds
hidden folders of ours (``.refused/`` quarantined archives, ``.extract-*`` staging) and others'
(``.ipynb_checkpoints``).
"""

from __future__ import annotations

from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

IMAGE_SUFFIXES = (*IMG_EXTENSIONS, ".gif")


def is_image(path: Path) -> bool:
    """A visible file whose name ends in one of :data:`IMAGE_SUFFIXES` (any case)."""
    return path.is_file() and not path.name.startswith(".") and has_file_allowed_extension(path.name, IMAGE_SUFFIXES)


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files ignored)."""
    return sorted(p for p in folder.iterdir() if is_image(p))


def list_class_folders(folder: Path) -> list[Path]:
    """The class folders directly inside ``folder``, sorted by name (hidden folders ignored)."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def folder_classes(
    folder: Path, max_classes: int | None = None, max_images_per_class: int | None = None
) -> list[tuple[str, list[Path]]]:
    """``folder/<class>/<image>`` -> [(class, [images])] sorted by name, optionally only the first ones."""
    classes = [(d.name, list_images(d)[:max_images_per_class]) for d in list_class_folders(folder)[:max_classes]]
    return [(name, files) for name, files in classes if files]
