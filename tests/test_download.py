"""Download, checksum and safe extraction, against a local HTTP server on 127.0.0.1 (never the internet)."""

from __future__ import annotations

import functools
import hashlib
import shutil
import stat
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from metaplus.data.download import DownloadError, UnsafeArchiveError, download_file, safe_extract_zip
from metaplus.data.omniglot import OmniglotTasks, ensure_part
from metaplus.testing import shared_data_dir
from metaplus.testing.zoo import make_omniglot_zip

DATA = shared_data_dir()
SHARED_OMNIGLOT = DATA / "omniglot" if DATA else None


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass


@pytest.fixture
def serve(tmp_path):
    """``serve(folder) -> base URL`` of a local HTTP server for ``folder`` (stopped after the test)."""
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(QuietHandler, directory=str(folder))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.skipif(
    SHARED_OMNIGLOT is None or not (SHARED_OMNIGLOT / "images_background.zip").is_file(),
    reason="shared Omniglot archives absent (set $METAPLUS_DATA or provide ../shared/data/omniglot)",
)
def test_shared_archives_download_verify_and_extract(tmp_path, serve):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = shutil.copy(SHARED_OMNIGLOT / "images_evaluation.zip", mirror)
    expected = dict(line.split()[::-1] for line in (DATA / "SHA256SUMS").read_text().splitlines())
    digest = "sha256:" + expected["omniglot/images_evaluation.zip"]
    root = tmp_path / "root"
    ensure_part(
        root, "images_evaluation", download=True, url=serve(mirror), checksums={"images_evaluation.zip": digest}
    )
    assert sha256(root / "images_evaluation.zip") == digest == sha256(Path(archive))
    pngs = list((root / "images_evaluation").glob("*/*/*.png"))
    assert len(pngs) == 13180
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temporary files remain"


def test_download_flag_fetches_everything_omniglot_needs(tmp_path, serve):
    mirror = tmp_path / "mirror"
    make_omniglot_zip(mirror, "images_background", alphabets=2, characters=3)
    make_omniglot_zip(mirror, "images_evaluation", alphabets=2, characters=2)
    splits = mirror / "splits" / "vinyals"
    splits.mkdir(parents=True)
    (splits / "test.txt").write_text("evaluation_alpha0/character01/rot000\nevaluation_alpha1/character02/rot180\n")
    url = serve(mirror)
    checksums = {f"{p}.zip": sha256(mirror / f"{p}.zip") for p in ("images_background", "images_evaluation")}
    root = tmp_path / "data" / "omniglot"
    source = OmniglotTasks(
        2,
        1,
        2,
        root=str(root),
        download=True,
        url=url,
        splits_url=f"{url}/splits/vinyals",
        checksums=checksums,
        split="test",
    )
    assert source.class_names == ["evaluation_alpha0/character01/rot000", "evaluation_alpha1/character02/rot180"]
    assert (root / "images_background" / "background_alpha1" / "character03").is_dir()
    assert (root / "splits" / "vinyals" / "test.txt").is_file()


def test_wrong_checksum_keeps_nothing(tmp_path, serve):
    mirror = tmp_path / "mirror"
    make_omniglot_zip(mirror, "images_background", alphabets=1, characters=1)
    dest = tmp_path / "root" / "images_background.zip"
    with pytest.raises(DownloadError, match="does not match its checksum"):
        download_file(f"{serve(mirror)}/images_background.zip", dest, "sha256:" + "0" * 64)
    assert not dest.exists() and not list(dest.parent.iterdir())


def test_missing_file_on_the_server_names_the_url(tmp_path, serve):
    url = f"{serve(tmp_path)}/images_background.zip"
    with pytest.raises(DownloadError, match=f"{url}.*404"):
        download_file(url, tmp_path / "out" / "x.zip", None)


def test_an_error_page_is_not_kept_as_a_split_file(tmp_path, serve):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    make_omniglot_zip(tmp_path / "root", "images_background", alphabets=1, characters=2)
    make_omniglot_zip(tmp_path / "root", "images_evaluation", alphabets=1, characters=2)
    (mirror / "val.txt").write_text("<html>rate limited</html>\n")
    with pytest.raises(ValueError, match="expected 'Alphabet/characterNN/rotDDD'"):
        OmniglotTasks(2, 1, 1, root=str(tmp_path / "root"), download=True, splits_url=serve(mirror), split="val")
    assert not (tmp_path / "root" / "splits" / "vinyals" / "val.txt").exists()


def malicious_zip(path: Path, member: str, symlink: bool = False) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("good/first.txt", "fine")
        info = zipfile.ZipInfo(member)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if symlink else "pwned")
    return path


@pytest.mark.parametrize(
    "member, symlink",
    [
        ("../escape.txt", False),
        ("good/../../escape.txt", False),
        ("/tmp/absolute-escape.txt", False),
        ("C:/escape.txt", False),
        ("..\\escape.txt", False),
        ("good/link", True),
    ],
)
def test_malicious_archive_is_refused_before_anything_is_written(tmp_path, member, symlink):
    archive = malicious_zip(tmp_path / "evil.zip", member, symlink)
    target = tmp_path / "target"
    with pytest.raises(UnsafeArchiveError, match="archive member"):
        safe_extract_zip(archive, target)
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/absolute-escape.txt").exists()
    assert list(target.iterdir()) == [], "nothing is extracted from an archive with an unsafe member"


def test_safe_archive_is_extracted(tmp_path):
    archive = tmp_path / "ok.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("top/", "")
        zf.writestr("top/a/b.txt", "hello")
        zf.writestr("other.txt", "x")
    moved = safe_extract_zip(archive, tmp_path / "target")
    assert sorted(p.name for p in moved) == ["other.txt", "top"]
    assert (tmp_path / "target" / "top" / "a" / "b.txt").read_text() == "hello"
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["other.txt", "top"]


# -- refused data stays refused (issue 16) ----------------------------------------------------------
def add_member(archive: Path, member: str, symlink: bool = False) -> Path:
    """Append one unsafe member to an otherwise valid Omniglot archive."""
    with zipfile.ZipFile(archive, "a") as zf:
        info = zipfile.ZipInfo(member)
        if symlink:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd" if symlink else "pwned")
    return archive


def test_a_refused_download_is_refused_again_by_the_identical_rerun(tmp_path, serve):
    mirror = tmp_path / "mirror"
    add_member(make_omniglot_zip(mirror, "images_background", alphabets=1, characters=2), "../escape.png")
    make_omniglot_zip(mirror, "images_evaluation", alphabets=1, characters=2)
    url = serve(mirror)
    root = tmp_path / "data" / "omniglot"
    settings = dict(
        root=str(root),
        download=True,
        url=url,
        checksums={},
        class_split="background_evaluation",
        val_characters=1,
        split="train",
    )
    for _attempt in range(2):  # the first run and its identical rerun fail alike
        with pytest.raises(UnsafeArchiveError, match=r"images_background\.zip: archive member '\.\./escape\.png'"):
            OmniglotTasks(2, 1, 2, **settings)
        assert not (root / "images_background.zip").exists(), "a refused archive does not stay in data.root"
        assert (root / ".refused" / "images_background.zip").is_file(), "it is kept aside for inspection"
    assert not (tmp_path / "data" / "escape.png").exists()


def test_a_download_with_a_wrong_checksum_is_refused_again_by_the_rerun(tmp_path, serve):
    mirror = tmp_path / "mirror"
    make_omniglot_zip(mirror, "images_background", alphabets=1, characters=2)
    url = serve(mirror)
    root = tmp_path / "omniglot"
    for _attempt in range(2):
        with pytest.raises(DownloadError, match="does not match its checksum"):
            ensure_part(
                root,
                "images_background",
                download=True,
                url=url,
                checksums={"images_background.zip": "sha256:" + "0" * 64},
            )
        assert not (root / "images_background.zip").exists()


@pytest.mark.parametrize(
    "member, symlink",
    [
        ("images_background/../../escape.png", False),
        ("/abs/escape.png", False),
        ("images_background/a/character01/link.png", True),
    ],
)
def test_an_unsafe_member_in_an_archive_read_in_place_fails(tmp_path, member, symlink):
    root = tmp_path / "omniglot"
    add_member(make_omniglot_zip(root, "images_background", alphabets=2, characters=2), member, symlink)
    make_omniglot_zip(root, "images_evaluation", alphabets=1, characters=2)
    with pytest.raises(UnsafeArchiveError, match=rf"images_background\.zip: archive member '{member}'"):
        OmniglotTasks(2, 1, 2, root=str(root), class_split="background_evaluation", val_characters=1, split="train")
    # The same archive without the unsafe member is read (the check refuses only what it must).
    root2 = tmp_path / "clean"
    make_omniglot_zip(root2, "images_background", alphabets=2, characters=2)
    make_omniglot_zip(root2, "images_evaluation", alphabets=1, characters=2)
    source = OmniglotTasks(
        2, 1, 2, root=str(root2), class_split="background_evaluation", val_characters=1, split="train"
    )
    assert source.num_classes == 3
