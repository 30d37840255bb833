"""tieredImageNet (Ren et al. 2018): 351/97/160 ILSVRC-2012 classes under 20/6/8 high-level categories.

Two release layouts are read from ``root``, per split:
- folder per class: ``root/<split>/<wnid>/*.jpg`` (any image type), e.g. as written by
  tiered-imagenet-tools; the wnids are checked against ``splits/tieredimagenet/<split>.txt`` (Ren et
  al.'s split files), a folder that is not a class of the split is an error;
- Ren et al.'s pickled arrays (github.com/renmengye/few-shot-ssl-public, ``fewshot/data/tiered_imagenet.py``):
  ``root/<split>_labels.pkl`` (a dict: ``label_specific`` int array per image, ``label_specific_str``
  class names, ``label_general``/``label_general_str`` the categories) with the images either in
  ``root/<split>_images_png.pkl`` (a list of PNG-encoded uint8 arrays, one per image, as written by
  ``compress_tiered_imagenet.py``) or in ``root/<split>_images.npz`` (``images``: N x 84 x 84 x 3 uint8
  in OpenCV's BGR order, turned to RGB here). The pickles are read with a restricted unpickler. These
  files define the split themselves (their class names are synset words, not wnids), so only the
  number of classes is checked against the split file.
Images are decoded once (84x84 RGB by default; other sizes resized with Lanczos, in every layout)
into a uint8 cache and normalised with ImageNet's per-channel mean/std (:func:`preprocessing`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from metaplus.data.cache import cache_key, cache_prefix, cached_class_images, file_identity, load_image_files
from metaplus.data.class_images import ClassImages
from metaplus.data.class_splits import read_split, split_folder_classes, split_path
from metaplus.data.errors import CorruptDatasetError, DatasetNotFoundError
from metaplus.data.image_source import ImageSource
from metaplus.data.miniimagenet import IMAGENET_MEAN, IMAGENET_STD
from metaplus.data.miniimagenet import preprocessing as imagenet_preprocessing
from metaplus.data.preprocessing import Preprocessing, decode_image
from metaplus.data.safe_pickle import load_pickle, text, text_keys

HOW_TO_GET = (
    "tieredImageNet is built from ILSVRC-2012 (ImageNet's terms of access apply): use Ren et al.'s "
    "pickled release (github.com/renmengye/few-shot-ssl-public, its README links the archive) or build "
    "class folders with github.com/yaoyao-liu/tiered-imagenet-tools, and point data.root at the folder"
)


def preprocessing(
    image_size: int = 84, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Preprocessing:
    """tieredImageNet's input, as mini-ImageNet's: RGB, resized to ``image_size`` (Lanczos),
    ``(x / 255 - mean) / std``, whichever layout the data came in. The sources decode and normalise
    with it; ``metaplus.load(...).preprocess`` is it."""
    return imagenet_preprocessing(image_size, mean, std)


class TieredImageNetTasks(ImageSource):
    class_splits = ("ren",)
    root_holds = "the tieredImageNet folder"

    def __init__(
        self,
        ways: int,
        shots: int,
        queries: int,
        root: str,
        class_split: str = "ren",
        image_size: int = 84,
        cache_dir: str | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        max_classes: int | None = None,
        max_images_per_class: int | None = None,
        split: str = "train",
    ):
        root_path = self.checked_root(split, class_split, image_size, root, max_classes, max_images_per_class)
        folder, labels = root_path / split, root_path / f"{split}_labels.pkl"
        images = [p for p in (root_path / f"{split}_images.npz", root_path / f"{split}_images_png.pkl") if p.is_file()]
        prep = preprocessing(image_size, mean, std)
        if folder.is_dir():
            wanted = read_split("tieredimagenet", split)
            known_from = f"tieredImageNet '{split}' classes ({split_path('tieredimagenet', split)})"
            classes = split_folder_classes(
                "tieredimagenet", split, folder, wanted, known_from, max_classes, max_images_per_class
            )
            data = load_image_files(
                "tieredimagenet",
                split,
                classes,
                root_path,
                prep.mode,
                prep.size,
                cache_dir,
                max_classes=max_classes,
                max_images_per_class=max_images_per_class,
            )
        elif labels.is_file() and images:
            paths = [labels, images[0]]
            # resample: the npz layout's resizing was bilinear before it became Lanczos like the others
            key = cache_key(
                split=split,
                image_size=image_size,
                max_classes=max_classes,
                max_images=max_images_per_class,
                files=file_identity(paths, relative_to=root_path),
                resample=prep.resample,
            )
            prefix = cache_prefix(
                "tieredimagenet",
                f"{split}-pickled",
                image_size,
                root_path,
                max_classes=max_classes,
                max_images=max_images_per_class,
            )
            data = cached_class_images(
                cache_dir,
                prefix,
                key,
                lambda: pickled_split(labels, images[0], split, image_size, max_classes, max_images_per_class),
                shape=lambda: (
                    sum(map(len, pickled_members(labels, split, max_classes, max_images_per_class)[3])),
                    3,
                    image_size,
                    image_size,
                ),
            )
        else:
            raise DatasetNotFoundError(
                f"tieredImageNet split '{split}' not found: looked for {folder}/<wnid>/*.jpg and for {labels} with "
                f"{root_path / f'{split}_images_png.pkl'} or {root_path / f'{split}_images.npz'} (Ren et al.'s "
                f"layout); {HOW_TO_GET}."
            )
        super().__init__(data, prep, ways, shots, queries, split)


def pickled_split(
    labels_path: Path, images_path: Path, split: str, image_size: int, max_classes: int | None, max_images: int | None
) -> ClassImages:
    """Ren et al.'s arrays -> ClassImages, classes in label order (label_specific 0, 1, ...)."""
    labels, names, classes, members = pickled_members(labels_path, split, max_classes, max_images)
    order = np.concatenate(members)
    if images_path.suffix == ".npz":
        pixels = npz_images(images_path, order, len(labels), image_size)
    else:
        pixels = png_images(images_path, order, len(labels), image_size)
    return ClassImages(pixels, torch.tensor([len(m) for m in members], dtype=torch.long), [names[c] for c in classes])


def pickled_members(labels_path: Path, split: str, max_classes: int | None, max_images: int | None) -> tuple:
    """(labels, class names, chosen classes, their images' positions) from Ren et al.'s labels file."""
    record = text_keys(load_pickle(labels_path, encoding="latin1"), labels_path)
    if "label_specific" not in record or "label_specific_str" not in record:
        raise CorruptDatasetError(
            f"{labels_path} lacks 'label_specific'/'label_specific_str': not Ren et al.'s tieredImageNet labels file"
        )
    labels = np.asarray(record["label_specific"]).astype(np.int64)
    names = [text(n) for n in record["label_specific_str"]]
    expected = len(read_split("tieredimagenet", split))
    if len(names) > expected or (len(labels) and (labels.min() < 0 or labels.max() >= len(names))):
        raise CorruptDatasetError(
            f"{labels_path}: {len(names)} class names and labels up to "
            f"{labels.max() if len(labels) else None}, but tieredImageNet '{split}' has "
            f"{expected} classes ({split_path('tieredimagenet', split)})"
        )
    classes = [c for c in range(len(names)) if (labels == c).any()][:max_classes]
    return labels, names, classes, [np.flatnonzero(labels == c)[:max_images] for c in classes]


def npz_images(path: Path, order: np.ndarray, count: int, image_size: int) -> torch.Tensor:
    try:
        with np.load(path, mmap_mode="r", allow_pickle=False) as archive:
            images = archive["images"]
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or len(images) != count:
                raise CorruptDatasetError(
                    f"{path}: 'images' must be N x H x W x 3 uint8 with one image per label "
                    f"({count}), got {images.dtype} {images.shape}"
                )
            chosen = np.ascontiguousarray(images[order][..., ::-1])  # OpenCV's BGR -> RGB
    except (OSError, ValueError, KeyError) as err:
        raise CorruptDatasetError(f"cannot read {path}: {err}. Replace the file (re-download the release).") from None
    if chosen.shape[1:3] == (image_size, image_size):
        return torch.from_numpy(chosen).permute(0, 3, 1, 2).contiguous()
    pixels = torch.empty(len(chosen), 3, image_size, image_size, dtype=torch.uint8)
    for row, (image, index) in enumerate(zip(chosen, order.tolist())):  # as the other layouts: PIL's Lanczos
        pixels[row] = decode_image(Image.fromarray(image), f"{path}[{index}]", "RGB", image_size)
    return pixels


def png_images(path: Path, order: np.ndarray, count: int, image_size: int) -> torch.Tensor:
    encoded = load_pickle(path, encoding="latin1")
    if not isinstance(encoded, list) or len(encoded) != count:
        raise CorruptDatasetError(
            f"{path} must hold a list of {count} PNG-encoded images (one per label), got "
            f"{type(encoded).__name__} of {len(encoded) if hasattr(encoded, '__len__') else '?'}"
        )
    pixels = torch.empty(len(order), 3, image_size, image_size, dtype=torch.uint8)
    for row, index in enumerate(order.tolist()):
        # PNGs written by cv2.imencode from BGR arrays hold proper RGB, so PIL decodes them as they are.
        pixels[row] = decode_image(
            np.asarray(encoded[index], dtype=np.uint8).tobytes(), f"{path}[{index}]", "RGB", image_size
        )
    return pixels
