"""Process-wide settings for running byola on a CPU."""
from __future__ import annotations

import ctypes
import platform

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(max_block_bytes: int = 1 << 30) -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the OS at once.

    By default glibc serves blocks above a threshold (at most 32 MiB) with fresh `mmap`s and unmaps them when
    freed, so the large activations of every training step (or of a big inference batch) are page-faulted and
    zeroed anew. On this project's 2-core benchmark VM that was about half of the eager BYOL-A step (AudioNTT2020
    d=512, batch 64: 2988 -> 1564 ms; benchmarks/pretrain_speed.py). With an mmap threshold of `max_block_bytes`
    and trimming off, freed blocks stay in the heap for the next step; resident memory then stays at its peak.

    A tuned allocator (jemalloc, tcmalloc) loaded with LD_PRELOAD does the same but cannot be installed by pip;
    glibc's own knobs need nothing. Affects the whole process and the workers it forks later. Returns False,
    changing nothing, where the C library is not glibc (e.g. macOS, musl).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, max_block_bytes)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
