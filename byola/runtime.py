"""Process-wide settings: CPU memory behaviour, and the check that a requested device exists."""
from __future__ import annotations

import ctypes
import platform

from .errors import UsageError

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


def check_device(device: str, option: str = "--device") -> None:
    """Refuse a device PyTorch cannot use, before any work: a :class:`UsageError` naming ``option``."""
    import torch  # here, not at import: the CLI imports this module before it needs torch

    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UsageError(f"{option} {device!r} is not a torch device", "use cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"{option} {device}: PyTorch sees no CUDA GPU here",
                         f"use {option} cpu, or install a CUDA build of PyTorch on a machine with a GPU")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"{option} {device}: only {torch.cuda.device_count()} GPU(s) visible",
                         f"use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise UsageError(f"{option} {device}: MPS is not available here", f"use {option} cpu")
