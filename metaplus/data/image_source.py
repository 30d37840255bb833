"""The base of the image sources (Omniglot, mini-ImageNet, tieredImageNet, CIFAR-FS/FC100, CUB, image
folders): the checks each constructor starts with and the episodes it ends with.

A source's constructor reads ``data.root`` with :meth:`ImageSource.checked_root`, builds its
:class:`Preprocessing` with its module's ``preprocessing(...)``, decodes (or loads from the cache)
its split's :class:`ClassImages`, and hands both to ``ImageSource.__init__``.
"""

from __future__ import annotations

from pathlib import Path

from metaplus.config import check, check_choice, check_int
from metaplus.data.class_images import ClassImages
from metaplus.data.preprocessing import Preprocessing
from metaplus.data.sampler import ImageEpisodes

SPLITS = ("train", "val", "test")


def check_subset_limits(max_classes: int | None, max_images_per_class: int | None) -> None:
    """``source.max_classes`` / ``source.max_images_per_class`` (a subset for benchmarks and tests)."""
    for key, value in (("max_classes", max_classes), ("max_images_per_class", max_images_per_class)):
        check(
            f"source.{key}", value, value is None or (isinstance(value, int) and value >= 1), "null or an integer >= 1"
        )


class ImageSource(ImageEpisodes):
    """Episodes of one split of an image dataset, normalised by the source's :class:`Preprocessing`
    (kept as ``preprocessing``: what ``metaplus.load(run).preprocess`` rebuilds from the config).

    Subclasses name their ``data.split`` choices (``class_splits``) and what ``data.root`` must hold
    (``root_holds``), both used by :meth:`checked_root`'s errors.
    """

    class_splits: tuple[str, ...] = ()
    root_holds: str = "the dataset folder"

    @classmethod
    def checked_root(
        cls,
        split: str,
        class_split: str,
        image_size: int,
        root: str | None,
        max_classes: int | None = None,
        max_images_per_class: int | None = None,
    ) -> Path:
        """The arguments every image source takes, checked (each error names its key); ``root`` as a Path."""
        check_choice("split", split, set(SPLITS))
        check_choice("source.class_split", class_split, set(cls.class_splits))
        check_int("source.image_size", image_size, 1)
        check("source.root", root, root is not None, f"{cls.root_holds} (data.root)")
        check_subset_limits(max_classes, max_images_per_class)
        return Path(root).expanduser()

    def __init__(
        self, data: ClassImages, preprocessing: Preprocessing, ways: int, shots: int, queries: int, split: str
    ):
        super().__init__(data, ways, shots, queries, mean=preprocessing.mean, std=preprocessing.std, split=split)
        self.preprocessing = preprocessing
