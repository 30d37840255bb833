"""One run directory, one running process.

Two processes started in the same run directory (a requeued cluster job while the old one still
runs, or the same command launched twice) overwrite each other's checkpoints and logs; before this
lock both died in the CSV logger and the first run was lost. Now the first process holds
``<run dir>/.metaplus.lock`` for as long as it runs and the second stops at once, naming the
directory and the holder (host, PID, start time), without touching anything.

The lock is a POSIX record lock (``fcntl.lockf``) on that file: the kernel (or the NFS server)
releases it when its process ends, however it ends (SIGKILL included), so a dead process never
holds it. The file itself only says who holds it; it stays behind after a crash and is simply
taken over. On a filesystem that cannot lock (some Lustre/NFS mounts) the holder written in the
file decides: a holder on this host whose PID no longer runs is stale and is replaced; a live one,
or one on another host (which cannot be checked from here), keeps the directory.

Only the launching process locks (global rank 0): the ranks Lightning's DDP launcher starts re-run
the same entry point in the same directory and belong to the same run.
"""

from __future__ import annotations

import errno
import fcntl
import functools
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("metaplus")

LOCK_NAME = ".metaplus.lock"
#: lockf errors that mean "this filesystem cannot lock", as opposed to "someone holds the lock"
NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunDirectoryBusy(RuntimeError):
    """Another live process is running in this run directory."""


def holder_description(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "a process that left no description"
    return (
        f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"
        f" ({holder.get('command', '?')})"
    )


def read_holder(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def this_process() -> dict[str, Any]:
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:500],
    }


class RunLock:
    """The held lock of one run directory; :meth:`release` (or leaving the ``with`` block) frees it."""

    def __init__(self, run_dir: Path | str):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                os.close(fd)
                if error.errno not in NO_LOCKING:
                    raise self.busy(read_holder(self.path)) from None
                return self.acquire_without_locking()
            try:
                # A holder that released between our open and our lock has unlinked the file we locked:
                # lock the file that is there now instead.
                if os.fstat(fd).st_ino != os.stat(self.path).st_ino:
                    os.close(fd)
                    continue
            except FileNotFoundError:
                os.close(fd)
                continue
            # Read through our descriptor: closing any other descriptor of this file would drop the
            # POSIX lock we just took (a lockf pitfall).
            previous = read_holder_fd(fd)
            if previous:  # left behind by a process that ended without releasing (killed, crashed)
                log.info(
                    "run lock: %s held by %s, which has ended; taking it over", self.path, holder_description(previous)
                )
            self.fd = fd
            self.write_holder()
            return self

    def acquire_without_locking(self) -> RunLock:
        """The filesystem cannot lock: judge the holder written in the file by its host and PID."""
        holder = read_holder(self.path)
        if holder and holder.get("pid") != os.getpid():
            same_host = holder.get("host") == socket.gethostname()
            if not same_host or process_alive(int(holder.get("pid", -1))):
                raise self.busy(holder, unverifiable=not same_host)
            log.warning(
                "run lock: %s names %s, which no longer runs: stale, taking it over (this filesystem "
                "cannot lock files)",
                self.path,
                holder_description(holder),
            )
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self.write_holder()
        return self

    def write_holder(self) -> None:
        payload = json.dumps(this_process()).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, payload, 0)
        os.fsync(self.fd)

    def busy(self, holder: dict[str, Any] | None, unverifiable: bool = False) -> RunDirectoryBusy:
        message = (
            f"run directory {self.run_dir} is in use by another run: {holder_description(holder)}. Two runs in "
            f"one directory overwrite each other's checkpoints and logs, so this one stops without touching "
            f"it. Wait for that run to end (a requeued job: end the old one first), or give this run its "
            f"own directory (hydra.run.dir=...)."
        )
        if unverifiable:
            message += (
                f" This filesystem cannot lock files and that host cannot be checked from here: if that "
                f"process no longer runs, delete {self.path}."
            )
        return RunDirectoryBusy(message)

    def release(self) -> None:
        if self.fd is None:
            return
        # Unlink first, then close (which drops the lock): a process that opened the old file in
        # between sees it is gone and locks a fresh one (the inode check in acquire).
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except FileNotFoundError:  # the directory was removed with the run (a config error)
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def read_holder_fd(fd: int) -> dict[str, Any] | None:
    try:
        return json.loads(os.pread(fd, 1 << 16, 0) or b"null")
    except (OSError, ValueError):
        return None


def is_launching_process() -> bool:
    """Global rank 0 (Lightning's reading of RANK / LOCAL_RANK / SLURM_PROCID): the process that owns the run."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def one_process_per_run_directory(run: Callable) -> Callable:
    """Decorator for ``run(cfg)``: hold the lock of ``cfg.paths.output_dir`` while it runs."""

    @functools.wraps(run)
    def locked(cfg, *args, **kwargs):
        if not is_launching_process():
            return run(cfg, *args, **kwargs)
        with RunLock(cfg.paths.output_dir):
            return run(cfg, *args, **kwargs)

    return locked
