"""Keep freed memory in the process instead of handing it back to the kernel.

A U-Net pass over a batch of slices allocates and frees activations of a few to 60 MB hundreds of
times. With glibc's default settings much of that memory goes back to the kernel when it is
freed (blocks above the mmap threshold are unmapped, and the top of the heap is trimmed), so the
next pass touches fresh pages and pays a page fault for every 4 kB of them. Measured on a 2-core
AVX512-BF16 host, `t1w` v16 translating 8 slices: about a million minor page faults and 1.7-1.9 s
of kernel time in 8.2-8.5 s; with the heap kept, none and 0.1-0.4 s, in 7.3-7.4 s. glibc caps the
mmap threshold at 32 MB, and a guided step's batch of 16 has larger activations (the up path's
concatenations at full resolution: 42-63 MB in bfloat16), so mmap is turned off altogether and
those come from the heap too: on a 2-core AMX host, 8 more slices through ``midiffusion
translate`` then fault 35,000 more pages instead of 130,000-200,000, and each slice costs about
5 % less. The numbers computed are the same, only where their memory comes from changes.

The cost is that the process keeps up to its peak heap after a translation, which a worker
reuses for the next one anyway.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt() parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest allowed: blocks below it come from the heap
MMAP_MAX = 0  # no block from mmap at all (glibc still falls back to it if the heap cannot grow)
TRIM_THRESHOLD = 1024**3  # return heap memory to the kernel only past 1 GiB free at the top
TOP_PAD = 256 * 1024 * 1024  # grow the heap in large steps


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc's malloc as the module docstring says, once per process. Returns whether the
    settings took (False where the C library is not glibc, e.g. macOS or musl)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    settings = (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (M_MMAP_MAX, MMAP_MAX),
        (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
    )
    took = all(mallopt(param, value) == 1 for param, value in settings)
    return took and mallopt(M_TOP_PAD, TOP_PAD) == 1
