"""Native memory of long-lived processes that read and rewrite large Arrow tables.

The worker loads a partition's shards as large Arrow tables and LanceDB merges and
compacts them, over and over. With Arrow's default allocator (mimalloc) and glibc's
default of one malloc arena per thread, the memory those tables freed stayed with the
process: in a 1,000-shard probe that rewrote its tables (an earlier design of
streams.store) the RSS settled at ~750 MiB, against 510-570 MiB with the system
allocator and two arenas.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

import pyarrow as pa

log = logging.getLogger(__name__)

_M_ARENA_MAX = -8  # (glibc's mallopt parameter)
ARENAS = 2


def return_freed_memory() -> None:
    """Allocate Arrow buffers with malloc, from at most ARENAS arenas, so that what a
    table freed can go back to the OS (``pa.default_memory_pool().release_unused()``
    then trims). Call early: arenas already made are kept."""
    pa.set_memory_pool(pa.system_memory_pool())
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        if libc.mallopt(_M_ARENA_MAX, ARENAS) != 1:
            log.debug("mallopt(M_ARENA_MAX) refused")
    except (OSError, AttributeError):
        log.debug("no glibc here: malloc arenas left as they are")
