"""Process-wide runtime settings that training commands apply at start.

`keep_freed_memory()`: by default glibc hands large freed blocks back to the OS (munmap,
heap trimming) and takes them again on the next allocation, page fault by page fault.
Training loops free and re-allocate the same large activation tensors every step, so
on CPU this churn dominated MAML training (up to 43% system time); keeping freed memory
in the process made training about 1.5x faster. The cost is a higher resident size:
memory freed once stays with the process. Opt out with `FEWSHOT_MALLOC=system`; setting
glibc's own `MALLOC_MMAP_MAX_`, `MALLOC_TRIM_THRESHOLD_` or `MALLOC_TOP_PAD_` also leaves
the allocator as you configured it.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4
TRIM_THRESHOLD = (1 << 31) - 1
"""Keep up to 2 GiB (mallopt's largest value) of free heap instead of returning it."""
TOP_PAD = 64 << 20
"""Grow the heap 64 MiB beyond each request, so growth takes fewer system calls."""
GLIBC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def keep_freed_memory() -> bool:
    """Tell glibc malloc to keep freed memory for reuse; True when the setting was applied.

    Does nothing (returns False) off glibc Linux, with `FEWSHOT_MALLOC=system`, or when
    glibc's own MALLOC_* tuning variables are set.
    """
    if os.environ.get("FEWSHOT_MALLOC", "").strip().lower() == "system":
        return False
    if any(name in os.environ for name in GLIBC_ENV):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    settings = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
