"""Keeps glibc from handing the inner loop's score matrices back to the kernel every step.

Why: a batched inner step allocates a few (users x catalogue) float matrices per
step, 3.8 MB each for 256 users of ml-1m. glibc gives a freed block that large
back to the kernel (it was mmapped, or the free space at the top of the heap
passed the trim threshold), so the next step page-faults it in again, zeroed,
and those faults cost about as much as the step's arithmetic. Both thresholds
are set because setting either one turns off glibc's adaptive choice of both.
The cost: freed memory stays with the process for reuse.
Process-wide, so entry points that adapt users in batches call it.
"""

from __future__ import annotations

import ctypes
import platform
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers, <malloc.h>
MMAP_THRESHOLD = 32 * 2**20  # blocks below this come from the heap: glibc's largest on 64-bit
TRIM_THRESHOLD = 256 * 2**20  # free bytes at the heap's top kept for reuse before trimming


def keep_large_blocks() -> bool:
    """Raises glibc's mmap and trim thresholds; False (nothing changed) elsewhere."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    if not mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
