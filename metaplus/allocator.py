"""Keep large activation buffers mapped between meta-iterations (glibc malloc; issue 26).

glibc serves every allocation above its mmap threshold (128 KiB, raised dynamically up to 32 MiB)
with a fresh ``mmap`` and hands it back with ``munmap`` when freed. A meta-iteration allocates and
frees the same large activation and gradient buffers (tens of MB at 84x84) again and again, so the
kernel maps and zero-fills those pages anew each time: page faults and system time on every iteration.
:func:`configure_allocator` (config key ``malloc_keep_buffers``) tells glibc to serve them from its
heap instead and to keep freed memory for the next request:

- ``M_MMAP_MAX = 0``: no allocation is served by its own mapping. (``M_MMAP_THRESHOLD`` cannot do
  it: glibc refuses thresholds above 32 MiB on 64-bit, and the largest buffers are bigger.)
- ``M_TRIM_THRESHOLD`` = 4 GiB: free memory at the top of the heap is returned to the system only
  above that much, so the next iteration finds its buffers already mapped.

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
#: Heap memory kept for reuse instead of being returned to the system (bytes).
TRIM_THRESHOLD = 4 * 1024**3


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
    applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not applied:
        log.warning("malloc_keep_buffers: glibc's mallopt refused the settings; the allocator is unchanged")
    return applied
