"""Numeric precision as a choice: fp32 (exact), bf16 (autocast), or auto = bf16 only where the hardware runs it
natively.

bf16 autocast pays off only on hardware with bf16 matrix units: CUDA GPUs that support it, and CPUs with
`avx512_bf16` or AMX (`amx_bf16`). Elsewhere oneDNN emulates bf16 through fp32 and converts every tensor twice, so it
is slower than fp32 and less exact; asking for it there still works but warns once.
"""
from __future__ import annotations

import contextlib
import platform
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from .errors import UsageError

PRECISIONS = ("fp32", "bf16", "auto")
# /proc/cpuinfo flags of CPUs that compute bf16 dot products natively (AVX-512 BF16, Intel AMX).
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
_CPUINFO = Path("/proc/cpuinfo")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags Linux reports in /proc/cpuinfo (empty where it is absent, e.g. macOS)."""
    try:
        text = _CPUINFO.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_model() -> str:
    """The CPU model name (/proc/cpuinfo, else `platform.processor()`)."""
    try:
        for line in _CPUINFO.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (avx512_bf16 or amx_bf16)."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_CPU_FLAGS)


def native_bf16(device: str | torch.device) -> bool:
    """True when `device` runs bf16 matrix products natively (CUDA: `torch.cuda.is_bf16_supported`)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_native_bf16()
    return False


_warned: set[str] = set()


def resolve_precision(precision: str, device: str | torch.device) -> torch.dtype:
    """The compute dtype for `precision` ("fp32", "bf16" or "auto") on `device`.

    "auto" is bf16 where `native_bf16(device)`, else fp32. "bf16" where it is not native still gives bf16, with a
    one-line warning (once per process and device type) that it is slower there than fp32.
    """
    if precision not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp32":
        return torch.float32
    native = native_bf16(device)
    if precision == "auto":
        return torch.bfloat16 if native else torch.float32
    if not native and device.type not in _warned:
        _warned.add(device.type)
        what = f"this CPU ({cpu_model()}) has no avx512_bf16/amx_bf16" if device.type == "cpu" else \
            f"{device} has no native bf16"
        warnings.warn(f"bf16 requested but {what}: it runs emulated, slower than fp32 (use fp32 or auto)",
                      RuntimeWarning, stacklevel=2)
    return torch.bfloat16


def autocast(dtype: torch.dtype, device: str | torch.device) -> contextlib.AbstractContextManager:
    """`torch.autocast` to `dtype` on `device`'s type, or a no-op context for fp32 (the model's own dtype)."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def precision_name(dtype: torch.dtype) -> str:
    """"fp32" or "bf16" (for fingerprints, cache keys and reports)."""
    return {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
