"""Process-wide settings: CPU memory behaviour, and the check that a requested device exists."""
from __future__ import annotations

import contextlib
import ctypes
import platform
from typing import Iterator

from .errors import UsageError

# glibc's mallopt parameters (malloc.h), and the initial value glibc gives both thresholds.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_GLIBC_INITIAL_THRESHOLD = 128 * 1024
_kept_block_bytes: int | None = None  # keep_freed_memory's max_block_bytes while it is in force


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
    global _kept_block_bytes
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    done = bool(libc.mallopt(_M_MMAP_THRESHOLD, max_block_bytes)) and \
        bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1))
    _kept_block_bytes = max_block_bytes if done else None
    return done


@contextlib.contextmanager
def freed_memory_returned() -> Iterator[None]:
    """Within: freed memory goes back to the OS (blocks of 128 KiB and more get their own mapping, unmapped when
    freed: glibc's initial thresholds), where :func:`keep_freed_memory` is in force; its settings again after.

    For a pass that keeps part of what it allocates (the statistics pass of `byola embed` keeps every decoded
    waveform in `byola.decoded.DecodedWaves` for the embedding pass): with freed memory kept, those waveforms pin
    the heap around the holes of each batch's large temporaries, which the next batch cannot reuse, so the heap
    grows batch after batch, and the worker processes forked afterwards inherit it. Measured on esc50_f4 (392 x
    5 s, statistics computed; benchmarks/embed_speed.py --memory): 1.85 GB resident in the main process without
    this, 0.96 GB with it (2.37 and 1.15 GB for all processes), the same embeddings. The pass's time is in
    decoding, not in page faults.
    """
    kept = _kept_block_bytes
    if kept is None:
        yield
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_INITIAL_THRESHOLD)
    libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_INITIAL_THRESHOLD)
    try:
        yield
    finally:
        keep_freed_memory(kept)


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
