"""Download a dataset archive, verify its checksum, and extract it without trusting its contents.

- :func:`download_file` streams to a temporary file beside the target, hashes while writing, and
  renames only a verified file into place: an interrupted or wrong download never looks complete.
- :func:`safe_extract_zip` checks every member before writing anything: absolute paths, drive
  letters, ``..`` components, symbolic links and anything else that would land outside the target
  folder are refused (the "zip slip" attack), then extracts into a temporary folder inside the
  target and moves the top-level entries into place.

Not torchvision's ``download_and_extract_archive`` (same MD5s): it leaves a file that fails its
checksum in place, retries https over plain http, and its ``extractall`` rewrites unsafe member
names instead of refusing the archive, which then could not be moved to ``data.root/.refused/``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from metaplus.data.errors import DownloadError, UnsafeArchiveError

CHUNK = 1 << 20


def parse_digest(digest: str) -> tuple[str, str]:
    """``"sha256:ab12..."`` or ``"md5:..."`` -> (algorithm, hex digest)."""
    algorithm, _, value = digest.partition(":")
    if not value or algorithm not in hashlib.algorithms_available:
        raise ValueError(f"checksum '{digest}' must read '<algorithm>:<hex digest>', e.g. 'sha256:...'")
    return algorithm, value.lower()


def download_file(url: str, dest: Path, digest: str | None, timeout: float = 60.0) -> Path:
    """Fetch ``url`` to ``dest``; with ``digest`` (``algo:hex``), refuse a file that does not match."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    algorithm, expected = parse_digest(digest) if digest else ("sha256", None)
    h = hashlib.new(algorithm)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                h.update(chunk)
                out.write(chunk)
        if expected is not None and h.hexdigest() != expected:
            raise DownloadError(
                f"{url} does not match its checksum: expected {algorithm} {expected}, "
                f"got {h.hexdigest()}. The file was not kept; the server may have sent an error "
                f"page or a different version."
            )
        os.replace(tmp, dest)
    except OSError as err:  # URLError, HTTPError, timeouts and disk errors are all OSErrors
        raise DownloadError(f"downloading {url} to {dest} failed: {err}") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return dest


def member_target(info: zipfile.ZipInfo, target: Path) -> Path:
    """Where ``info`` would be written under ``target``; raise if that is unsafe."""
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"archive member '{name}' is a symbolic link; links are not extracted")
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or (path.parts and ":" in path.parts[0]) or ".." in path.parts:
        raise UnsafeArchiveError(f"archive member '{name}' has an absolute or parent-relative path")
    resolved = (target / path).resolve()
    if resolved != target and target not in resolved.parents:
        raise UnsafeArchiveError(f"archive member '{name}' would be written outside {target}")
    return resolved


def check_members(zf: zipfile.ZipFile, archive: Path, target: Path) -> list[zipfile.ZipInfo]:
    """Every member of ``zf`` checked as :func:`member_target` does; the error names the archive."""
    members = zf.infolist()
    for info in members:
        try:
            member_target(info, target)
        except UnsafeArchiveError as err:
            raise UnsafeArchiveError(f"{archive}: {err}") from None
    return members


def quarantine(path: Path) -> Path:
    """Move a refused file into ``.refused/`` beside it (replacing an older refused copy); return where."""
    path = Path(path)
    folder = path.parent / ".refused"
    folder.mkdir(exist_ok=True)
    moved = folder / path.name
    os.replace(path, moved)
    return moved


def safe_extract_zip(archive: Path, target: Path) -> list[Path]:
    """Extract ``archive`` into ``target`` after checking every member; return the top-level entries."""
    target = Path(target).resolve()
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        members = check_members(zf, archive, target)  # validate everything before writing anything
        staging = Path(tempfile.mkdtemp(dir=target, prefix=".extract-"))
        try:
            for info in members:
                out = member_target(info, staging)
                if info.is_dir():
                    out.mkdir(parents=True, exist_ok=True)
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
            moved = []
            for entry in sorted(staging.iterdir()):
                final = target / entry.name
                if final.exists():
                    shutil.rmtree(final) if final.is_dir() else final.unlink()
                os.replace(entry, final)
                moved.append(final)
            return moved
        finally:
            shutil.rmtree(staging, ignore_errors=True)
