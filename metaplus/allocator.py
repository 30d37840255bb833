"""Keep large activation buffers mapped between meta-iterations (glibc malloc; issue 26).

glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically up to 32 MiB)
with a fresh ``mmap`` and hands it back with ``munmap`` when freed. A meta-iteration allocates and
frees the same large activation and gradient buffers (tens of MB at 84x84) again and again, so the
kernel maps and zero-fills those pages anew each time: page faults and system time on every iteration.
:func:`configure_allocator` (config key ``malloc_keep_buffers``) tells glibc to serve them from its
heap instead and to keep freed memory for the next request:

- ``M_MMAP_MAX = 0``: no allocation is served by its own mapping. (``M_MMAP_THRESHOLD`` cannot do
  it: glibc refuses thresholds above 32 MiB on 64-bit, and the largest buffers are bigger.)
- ``M_TRIM_THRESHOLD`` = 2 GiB (the largest C int): free memory at the top of the heap is returned to the system only
  above that much, so the next iteration finds its buffers already mapped.

- ``M_ARENA_MAX = 1``: every thread allocates from the main heap. A thread's own arena grows in
  heaps of at most 64 MiB, so glibc maps and unmaps larger buffers for it on every use whatever the
  two settings above say (evaluation runs episodes on worker threads: :func:`metaplus.threads.map_on_workers`).

The cost: the process keeps its high-water mark of heap memory mapped (its RSS no longer falls
between iterations, and fragments of the heap may stay resident); bench/results/kernels.md gives the
measured peak RSS with and without. Linux with glibc only; elsewhere (macOS, musl, Windows) it
changes nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

log = logging.getLogger("metaplus")

# mallopt parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
#: Heap memory kept for reuse instead of being returned to the system (bytes): the largest value
#: mallopt takes (its value is a C int; ctypes silently truncated the former 4 GiB to 0, which made
#: glibc return the heap's top after every free).
TRIM_THRESHOLD = 2**31 - 1


def glibc():
    """The C library when it is glibc (it has ``mallopt``), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def configure_allocator(keep_buffers: bool) -> bool:
    """Apply ``malloc_keep_buffers``; return whether glibc took the settings (False: off, or not glibc)."""
    if not isinstance(keep_buffers, bool):
        from metaplus.errors import ConfigError

        raise ConfigError("malloc_keep_buffers", f"{keep_buffers!r} is invalid: must be true or false")
    if not keep_buffers:
        return False
    libc = glibc()
    if libc is None:
        log.info("malloc_keep_buffers: no effect on %s (glibc's mallopt only)", platform.system() or "this system")
        return False
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, 1))
    applied = all([bool(libc.mallopt(parameter, ctypes.c_int(value))) for parameter, value in settings])
    if not applied:
        log.warning("malloc_keep_buffers: glibc's mallopt refused the settings; the allocator is unchanged")
    return applied
