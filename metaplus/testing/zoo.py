"""Tiny copies of the public releases of CIFAR-100, tieredImageNet, CUB-200-2011 and Omniglot (its zip
archives), and folder-per-class image sets, in their exact on-disk formats, for the loaders' tests and the
sampling benchmark.

Every image encodes where it came from, so a test can tell that a loader put it in the right class:
CIFAR: red = 2 x fine label, green = 10 x index within (class, file), blue = 7 (train) or 107 (test);
tieredImageNet / CUB: a flat colour whose red channel is 20 x (class index in the fixture) + 10.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from metaplus.data.class_splits import read_split

# CIFAR-100's 20 superclasses and their fine classes (https://www.cs.toronto.edu/~kriz/cifar.html).
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
FINE_NAMES = sorted(f for fines in CIFAR100_SUPERCLASSES.values() for f in fines)  # meta's order: alphabetical
COARSE_NAMES = sorted(CIFAR100_SUPERCLASSES)
COARSE_OF = {f: COARSE_NAMES.index(c) for c, fines in CIFAR100_SUPERCLASSES.items() for f in fines}


def cifar_pixel(fine: int, index: int, test: bool) -> tuple[int, int, int]:
    return 2 * fine, (10 * index) % 256, 107 if test else 7


def make_cifar100(root: Path, train_per_class: int = 4, test_per_class: int = 2, seed: int = 0) -> Path:
    """``root/cifar-100-python/{train,test,meta}`` as the official release: pickled dicts with bytes
    keys (how Python 3 reads the Python 2 files with encoding='bytes'), 'data' (N, 3072) uint8 in
    red-green-blue planes, 'fine_labels'/'coarse_labels' lists, images in shuffled order."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, per_class, test in (("train", train_per_class, False), ("test", test_per_class, True)):
        entries = [(f, i) for f in range(100) for i in range(per_class)]
        entries = [entries[k] for k in rng.permutation(len(entries))]
        data = np.empty((len(entries), 3072), dtype=np.uint8)
        for row, (f, i) in enumerate(entries):
            r, g, b = cifar_pixel(f, i, test)
            data[row, :1024], data[row, 1024:2048], data[row, 2048:] = r, g, b
        record = {
            b"batch_label": f"{name} batch 1 of 1".encode(),
            b"data": data,
            b"fine_labels": [f for f, _ in entries],
            b"coarse_labels": [COARSE_OF[FINE_NAMES[f]] for f, _ in entries],
            b"filenames": [f"{FINE_NAMES[f]}_s_{i:06d}.png".encode() for f, i in entries],
        }
        (folder / name).write_bytes(pickle.dumps(record, protocol=2))
    meta = {
        b"fine_label_names": [n.encode() for n in FINE_NAMES],
        b"coarse_label_names": [n.encode() for n in COARSE_NAMES],
    }
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return root


def flat_image(value: int, size: int) -> Image.Image:
    return Image.new("RGB", (size, size), (value, 255 - value, 60))


def fixture_classes(dataset: str, per_split: dict[str, int]) -> dict[str, list[str]]:
    """The first ``n`` classes of each split's file: the fixture's classes."""
    return {split: read_split(dataset, split)[:n] for split, n in per_split.items()}


def class_value(position: int) -> int:
    return 20 * position + 10


def make_tiered_folders(root: Path, per_split: dict[str, int], images: int = 4, size: int = 24) -> dict[str, list[str]]:
    """``root/<split>/<wnid>/<wnid>_<k>.JPEG`` for the first classes of each split."""
    classes = fixture_classes("tieredimagenet", per_split)
    for split, names in classes.items():
        for c, wnid in enumerate(names):
            (root / split / wnid).mkdir(parents=True, exist_ok=True)
            for k in range(images):
                flat_image(class_value(c), size).save(root / split / wnid / f"{wnid}_{k}.JPEG", quality=100)
    return classes


def make_tiered_pickled(
    root: Path, split: str, classes: int, images: int = 4, size: int = 84, layout: str = "png", seed: int = 0
) -> list[str]:
    """Ren et al.'s files: ``<split>_labels.pkl`` and ``<split>_images_png.pkl`` (a list of
    cv2.imencode-style PNG arrays, shape (n, 1) uint8) or ``<split>_images.npz`` (N x H x W x 3, BGR)."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"synset word {c}" for c in range(classes)]
    labels = np.repeat(np.arange(classes, dtype=np.int32), images)
    labels = labels[np.random.default_rng(seed).permutation(len(labels))]  # images in shuffled order
    record = {
        "label_specific": labels,
        "label_general": (labels // 2).astype(np.int32),
        "label_specific_str": names,
        "label_general_str": {c // 2: f"category {c // 2}" for c in range(classes)},
    }
    (root / f"{split}_labels.pkl").write_bytes(pickle.dumps(record, protocol=pickle.HIGHEST_PROTOCOL))
    rgb = [np.asarray(flat_image(class_value(int(c)), size)) for c in labels]
    if layout == "npz":
        np.savez(root / f"{split}_images.npz", images=np.stack([image[..., ::-1] for image in rgb]))  # BGR, as cv2
    else:
        encoded = []
        for image in rgb:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG")
            encoded.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8).reshape(-1, 1))
        (root / f"{split}_images_png.pkl").write_bytes(pickle.dumps(encoded, protocol=pickle.HIGHEST_PROTOCOL))
    return names


def make_cub(root: Path, per_split: dict[str, int], images: int = 4, size: int = 30) -> dict[str, list[str]]:
    """``root/CUB_200_2011/images/<NNN.Class_name>/<Class_name>_<k>_<id>.jpg`` (non-square, as the birds)."""
    classes = fixture_classes("cub", per_split)
    folder = root / "CUB_200_2011" / "images"
    for names in classes.values():
        for c, name in enumerate(names):
            (folder / name).mkdir(parents=True, exist_ok=True)
            for k in range(images):
                Image.new("RGB", (size + 7, size), (class_value(c), 255 - class_value(c), 60)).save(
                    folder / name / f"{name.split('.', 1)[1]}_{k:04d}_{1000 + k}.jpg", quality=100
                )
    (root / "CUB_200_2011" / "classes.txt").write_text(
        "".join(f"{i + 1} {n}\n" for i, n in enumerate(sorted(n for v in classes.values() for n in v)))
    )
    return classes


# -- Omniglot's archives and image folders -------------------------------------------------------
def write_png(path: Path, value: int, size: int = 12, mode: str = "L") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, (size, size), colour).save(path)


def make_class_folders(root: Path, classes: int, per_class: int, mode: str = "RGB", suffix: str = ".png") -> Path:
    for c in range(classes):
        for i in range(per_class):
            write_png(root / f"class{c:02d}" / f"img{i:02d}{suffix}", (c * 37 + i * 5) % 256, mode=mode)
    return root


def make_omniglot_zip(root: Path, part: str, alphabets: int, characters: int, drawers: int = 4) -> Path:
    """A miniature official archive: ``part/<Alphabet>/characterNN/<id>_<drawer>.png`` (mode 1)."""
    root.mkdir(parents=True, exist_ok=True)
    archive = root / f"{part}.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for a in range(alphabets):
            for c in range(characters):
                for d in range(drawers):
                    image = Image.new("1", (105, 105), 1)
                    image.paste(0, (10 * c, 10 * d, 10 * c + 20 + a, 10 * d + 30))
                    path = root / "tmp.png"
                    image.save(path)
                    zf.write(path, f"{part}/{part[7:]}_alpha{a}/character{c + 1:02d}/{a:02d}{c:02d}_{d + 1:02d}.png")
                    path.unlink()
    return archive


def pattern_folder(root, classes: int = 40, images: int = 5, size: int = 16):
    """Grey class folders whose images are a class pattern plus noise (constant images would leave
    batch norm nothing to normalise and every loss at ln(ways))."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        pattern = rng.integers(0, 256, (size, size))
        (root / f"class{c:02d}").mkdir(parents=True)
        for i in range(images):
            pixels = np.clip(pattern + rng.normal(0, 30, (size, size)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(root / f"class{c:02d}" / f"{i}.png")
    return root
