"""Omniglot (Lake et al. 2015): 1,623 handwritten characters x 20 drawers, as few-shot episodes.

Reads the official release from ``root``: the archives ``images_background.zip`` and
``images_evaluation.zip`` or their extracted folders (``images_background/<Alphabet>/characterNN/
*.png``). Each archive is decoded once (resized to ``image_size`` with Lanczos, inverted so strokes
are 1 and paper is 0, as in the MAML code) into a uint8 cache shared by every split and run.

Class splits (``data.split``):
- ``vinyals`` (default): the split of Vinyals et al. (2016) in Snell et al.'s files
  ``root/splits/vinyals/{train,val,test}.txt`` (1028/172/423 characters); every 90-degree rotation
  of a character is its own class (4112/688/1692 classes), rotated counter-clockwise.
- ``background_evaluation``: Lake's original split, no rotations. Test = the 659 evaluation
  characters. Lake's release has no validation set, so ``val_characters`` (100) background
  characters drawn with ``val_seed`` (0) are held out as validation and the other 864 train, like the
  MAML reference code's 100 validation characters.

``download=true`` fetches missing archives from ``url`` (the official GitHub release), checks them
against ``checksums`` (the official MD5s unless given), and extracts them safely; missing Vinyals
split files are fetched from ``splits_url`` and checked line by line.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from metaplus.data.cache import cache_key, cache_prefix, cached_class_images, file_identity
from metaplus.data.class_images import ClassImages, decode_classes
from metaplus.data.download import check_members, download_file, quarantine, safe_extract_zip
from metaplus.data.episodes import Task, seeded_permutation
from metaplus.data.errors import CorruptDatasetError, DatasetNotFoundError, UnsafeArchiveError
from metaplus.data.image_source import ImageSource
from metaplus.data.preprocessing import Preprocessing
from metaplus.errors import check, check_int

OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
OFFICIAL_CHECKSUMS = {  # MD5s of the official archives (as published by torchvision's Omniglot)
    "images_background.zip": "md5:68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation.zip": "md5:6b91aef0f799c5bb55b94e3f2daec811",
}
SPLITS_URL = "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/data/omniglot/splits/vinyals"
PARTS = ("images_background", "images_evaluation")
SCHEMES = ("vinyals", "background_evaluation")
SPLIT_LINE = re.compile(r"^([^/]+/character\d+)/rot(000|090|180|270)$")


def preprocessing(image_size: int = 28) -> Preprocessing:
    """Omniglot's input: grey, resized to ``image_size`` (Lanczos), inverted (strokes 1, paper 0), x / 255.
    The sources decode with it; ``metaplus.load(...).preprocess`` is it."""
    return Preprocessing("L", image_size, invert=True)


class OmniglotTasks(ImageSource):
    class_splits = SCHEMES
    root_holds = "the folder holding the Omniglot archives"

    def __init__(
        self,
        ways: int,
        shots: int,
        queries: int,
        root: str,
        class_split: str = "vinyals",
        image_size: int = 28,
        download: bool = False,
        cache_dir: str | None = None,
        url: str = OFFICIAL_URL,
        splits_url: str = SPLITS_URL,
        checksums: dict[str, str] | None = None,
        val_characters: int = 100,
        val_seed: int = 0,
        augment_rotations: bool = False,
        split: str = "train",
    ):
        root_path = self.checked_root(split, class_split, image_size, root)
        check_int("source.val_characters", val_characters, 1)
        check("source.augment_rotations", augment_rotations, isinstance(augment_rotations, bool), "true or false")
        checksums = OFFICIAL_CHECKSUMS if checksums is None else checksums
        for part in PARTS:
            ensure_part(root_path, part, download, url, checksums)
        if class_split == "vinyals":
            classes = vinyals_classes(root_path, split, download, splits_url)
        else:
            classes = background_evaluation_classes(root_path, split, val_characters, val_seed, image_size, cache_dir)
        data = build_split(root_path, classes, image_size, cache_dir)
        super().__init__(data, preprocessing(image_size), ways, shots, queries, split)
        # MAML++'s training augmentation: training episodes only; val/test episodes stay fixed.
        self.augment_rotations = augment_rotations and split == "train"

    def sample_pixels(self, generator: torch.Generator) -> Task:
        task = super().sample_pixels(generator)
        if self.augment_rotations:
            task = rotate_classes(task, self.ways, generator)
        return task


def rotate_classes(task: Task, ways: int, generator: torch.Generator) -> Task:
    """Rotate all images of each class of the episode (support and query alike) by its own random
    multiple of 90 degrees, counter-clockwise: the MAML++ code's Omniglot training augmentation."""
    quarter_turns = torch.randint(0, 4, (ways,), generator=generator)

    def rotate(x: Tensor, y: Tensor) -> Tensor:
        out = x.clone()
        for label, k in enumerate(quarter_turns.tolist()):
            if k:
                rows = y == label
                out[rows] = torch.rot90(x[rows], k, dims=(-2, -1))
        return out

    return replace(task, support_x=rotate(task.support_x, task.support_y), query_x=rotate(task.query_x, task.query_y))


# -- finding (or fetching) the data ----------------------------------------------------------------
def ensure_part(root: Path, part: str, download: bool, url: str, checksums: dict[str, str]) -> None:
    archive, folder = root / f"{part}.zip", root / part
    if archive.is_file() or folder.is_dir():
        return
    if not download:
        raise DatasetNotFoundError(
            f"Omniglot not found: looked for {archive} (or the extracted folder {folder}/), expected the official "
            f"archive {part}.zip. Set data.download=true to fetch it from {url}/{part}.zip, or download it from "
            f"https://github.com/brendenlake/omniglot and point data.root (now {root}) at its folder."
        )
    download_file(f"{url.rstrip('/')}/{part}.zip", archive, checksums.get(f"{part}.zip"))
    try:
        safe_extract_zip(archive, root)
    except (UnsafeArchiveError, zipfile.BadZipFile) as err:
        # Left in place, the next run would find the archive and read it: move it out of data.root.
        moved = quarantine(archive)
        raise type(err)(f"{err} (the refused archive was moved to {moved})") from None


def split_file(root: Path, split: str, download: bool, splits_url: str) -> Path:
    path = root / "splits" / "vinyals" / f"{split}.txt"
    if path.is_file():
        return path
    if not download:
        raise DatasetNotFoundError(
            f"Omniglot Vinyals split file not found: looked for {path}, expected lines such as "
            f"'Angelic/character01/rot000'. Set data.download=true to fetch it from {splits_url}/{split}.txt, "
            f"or use data.split=background_evaluation."
        )
    download_file(f"{splits_url.rstrip('/')}/{split}.txt", path, None)
    try:
        read_split_lines(path)
    except CorruptDatasetError:
        path.unlink(missing_ok=True)  # not what we expected (an error page?): do not keep it
        raise
    return path


def read_split_lines(path: Path) -> list[tuple[str, int]]:
    """``Alphabet/characterNN/rotDDD`` lines -> [(character, quarter turns)]."""
    classes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = SPLIT_LINE.match(line.strip())
        if match is None:
            raise CorruptDatasetError(f"{path}:{number}: expected 'Alphabet/characterNN/rotDDD', got {line!r}")
        classes.append((match.group(1), int(match.group(2)) // 90))
    if not classes:
        raise CorruptDatasetError(f"{path} lists no classes")
    return classes


# -- class lists of each scheme --------------------------------------------------------------------
def vinyals_classes(root: Path, split: str, download: bool, splits_url: str) -> list[tuple[str, int]]:
    return read_split_lines(split_file(root, split, download, splits_url))


def background_evaluation_classes(
    root: Path, split: str, val_characters: int, val_seed: int, image_size: int, cache_dir: str | None
) -> list[tuple[str, int]]:
    if split == "test":
        return [(name, 0) for name in load_part(root, "images_evaluation", image_size, cache_dir).class_names]
    background = load_part(root, "images_background", image_size, cache_dir).class_names
    check(
        "source.val_characters",
        val_characters,
        val_characters < len(background),
        f"fewer than the {len(background)} background characters",
    )
    held_out = set(seeded_permutation(len(background), val_seed)[:val_characters])
    chosen = [i for i in range(len(background)) if (i in held_out) == (split == "val")]
    return [(background[i], 0) for i in chosen]


# -- decoding and assembling a split ---------------------------------------------------------------
def build_split(root: Path, classes: Sequence[tuple[str, int]], image_size: int, cache_dir: str | None) -> ClassImages:
    """Stack the (character, rotation) classes of a split into one ClassImages."""
    where: dict[str, tuple[ClassImages, int]] = {}
    for part in PARTS:
        data = load_part(root, part, image_size, cache_dir)
        where.update({name: (data, i) for i, name in enumerate(data.class_names)})
    images, names = [], []
    for character, quarter_turns in classes:
        if character not in where:
            raise CorruptDatasetError(
                f"the class split names character '{character}', which neither "
                f"{root}/images_background nor images_evaluation contains"
            )
        data, index = where[character]
        images.append(torch.rot90(data.of_class(index), quarter_turns, dims=(-2, -1)))
        names.append(f"{character}/rot{quarter_turns * 90:03d}")
    counts = torch.tensor([len(x) for x in images], dtype=torch.long)
    return ClassImages(torch.cat(images), counts, names)


_PARTS_IN_MEMORY: dict[tuple, ClassImages] = {}


def load_part(root: Path, part: str, image_size: int, cache_dir: str | None) -> ClassImages:
    """All characters of one archive (classes ``Alphabet/characterNN``), decoded once and cached.

    Kept in memory for the process as well: the train, val and test sources read the same archives.
    """
    reader = PartReader(root, part)
    key = cache_key(dataset="omniglot", part=part, image_size=image_size, files=reader.identity())
    if (part, key) not in _PARTS_IN_MEMORY:
        for stale in [k for k in _PARTS_IN_MEMORY if k[0] == part]:  # keep one version of each archive
            del _PARTS_IN_MEMORY[stale]
        _PARTS_IN_MEMORY[(part, key)] = cached_class_images(
            cache_dir,
            cache_prefix("omniglot", part, image_size, root),
            key,
            lambda: reader.decode(image_size),
            shape=lambda: (reader.count(), 1, image_size, image_size),
        )
    return _PARTS_IN_MEMORY[(part, key)]


class PartReader:
    """One Omniglot archive, read from ``<part>.zip`` (preferred: one file) or the ``<part>/`` folder."""

    def __init__(self, root: Path, part: str):
        self.archive, self.folder, self.part = root / f"{part}.zip", root / part, part
        self.use_zip = self.archive.is_file()
        self._zip: zipfile.ZipFile | None = None

    def identity(self) -> list:
        if self.use_zip:
            self.check_members()  # also when a decoded cache exists: a refused archive is never used
            return file_identity([self.archive])
        return file_identity(sorted(self.folder.glob("*/*/*.png")), relative_to=self.folder)

    def check_members(self) -> None:
        """Read in place, never extracted: still refuse what extraction would refuse (UnsafeArchiveError)."""
        try:
            with zipfile.ZipFile(self.archive) as zf:
                check_members(zf, self.archive, self.archive.parent.resolve())
        except (zipfile.BadZipFile, OSError):
            return  # reported with its remedy when the archive is decoded (classes())

    def count(self) -> int:
        """How many character images the part holds, from the names alone (no decoding); 0 for an
        archive that cannot be read (the decode that follows reports it with its remedy)."""
        try:
            return sum(len(names) for _, names in self.classes())
        except (CorruptDatasetError, UnsafeArchiveError):
            return 0
        finally:
            self.close()

    def decode(self, image_size: int) -> ClassImages:
        try:
            prep = preprocessing(image_size)
            return decode_classes(self.classes(), self.read, self.describe, prep.mode, prep.size, invert=prep.invert)
        finally:
            self.close()

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
            self._zip = None

    def classes(self) -> list[tuple[str, list[str]]]:
        if self.use_zip:
            try:
                self._zip = zipfile.ZipFile(self.archive)
            except (zipfile.BadZipFile, OSError) as err:
                raise CorruptDatasetError(
                    f"{self.archive} is not a readable zip archive ({err}); delete it and set "
                    f"data.download=true, or fetch it again from {OFFICIAL_URL}/{self.part}.zip"
                ) from None
            check_members(self._zip, self.archive, self.archive.parent.resolve())
            names = [n for n in self._zip.namelist() if n.endswith(".png")]
            relative = [n.split("/", 1)[1] for n in names if n.startswith(f"{self.part}/")]
        else:
            relative = [str(p.relative_to(self.folder)) for p in self.folder.glob("*/*/*.png")]
        by_character: dict[str, list[str]] = {}
        for name in sorted(relative):
            parts = name.split("/")
            if len(parts) == 3:
                by_character.setdefault(f"{parts[0]}/{parts[1]}", []).append(name)
        if not by_character:
            source = self.archive if self.use_zip else self.folder
            raise CorruptDatasetError(f"{source} holds no images laid out as {self.part}/<Alphabet>/characterNN/*.png")
        return sorted(by_character.items())

    def read(self, name: str):
        return self._zip.read(f"{self.part}/{name}") if self.use_zip else self.folder / name

    def describe(self, name: str) -> str:
        return f"{self.archive}:{self.part}/{name}" if self.use_zip else str(self.folder / name)
