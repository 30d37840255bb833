"""A measurement in a fresh child process: the parent reads the child's peak memory (``os.wait4``), and
a child that dies is reported by what it was measuring and how it ended (exit status, or the signal:
SIGKILL with no error is most likely the kernel's out-of-memory killer). bench/speed.py and
bench/memory.py run every measured setting this way, so one setting's peak memory is its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path


class ChildFailed(RuntimeError):
    """A measuring child process died (its stderr's end, or the signal that killed it, says why)."""


def run_measured(command: list[str], *, cwd: str | Path, env: dict[str, str] | None = None) -> float:
    """Run ``command`` in a fresh process started in ``cwd``; return its peak RSS in GB, read by the
    parent with ``os.wait4`` (the child's own high-water mark, children of it excluded). Call it from a
    small process: on Linux the figure starts at the caller's RSS at the fork (exec keeps the old
    memory's high-water mark). A child that
    fails raises RuntimeError with the end of its stderr and, on its last line, how it ended."""
    return run_measured_usage(command, cwd=cwd, env=env)[0]


def run_measured_usage(
    command: list[str], *, cwd: str | Path, env: dict[str, str] | None = None
) -> tuple[float, float]:
    """:func:`run_measured`'s (peak RSS in GB, CPU seconds): the child's user + system time, all its
    threads, as the kernel accounted it (on a shared machine the steadier figure than wall clock)."""
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "WANDB_MODE": "offline", **(env or {})},
    )
    _, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code:
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
        raise RuntimeError(proc.stderr.read().decode()[-3000:] + f"\n{how}")
    return round(usage.ru_maxrss / 1024**2, 3), usage.ru_utime + usage.ru_stime


def measured(command: list[str], what: str, *, cwd: str | Path) -> float:
    """:func:`run_measured`, with a failure raised as :class:`ChildFailed` naming ``what`` was measured
    and how the child ended."""
    try:
        return run_measured(command, cwd=cwd)
    except RuntimeError as error:
        lines = [line for line in str(error).splitlines() if line.strip()]
        oom = (
            " (SIGKILL with no error: most likely the kernel's out-of-memory killer, see dmesg)"
            if lines and lines[-1] == "killed by SIGKILL"
            else ""
        )
        raise ChildFailed(f"the {what} child failed: {lines[-1] if lines else 'no output'}{oom}") from error
