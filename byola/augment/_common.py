"""Shared helpers of the batched augmentations: random draws and autocast control.

Random draws: one optional ``torch.Generator`` drives every draw.

Numbers are drawn on the generator's device (the default generator of the target device when none is given) and
then moved to the data's device, so a CPU generator can drive GPU augmentations and its state is easy to
checkpoint (``generator.get_state()`` / ``set_state()``).
"""
from __future__ import annotations

import contextlib

import torch


def no_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """Disable autocast on ``device``: augmentations are preprocessing and keep the dtype of their input (matmuls
    and convolutions would otherwise run in half precision inside a mixed-precision training step)."""
    if torch.amp.is_autocast_available(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    return generator.device if generator is not None else device


def uniform(shape: tuple[int, ...], low: float, high: float, generator: torch.Generator | None,
            device: torch.device) -> torch.Tensor:
    """Float32 samples of U[low, high) with the given shape, on ``device``."""
    u = torch.rand(shape, generator=generator, device=_draw_device(generator, device))
    return (low + (high - low) * u).to(device)


def bernoulli(shape: tuple[int, ...], p: float, generator: torch.Generator | None,
              device: torch.device) -> torch.Tensor:
    """Boolean samples, True with probability ``p``."""
    u = torch.rand(shape, generator=generator, device=_draw_device(generator, device))
    return (u < p).to(device)


def randint(shape: tuple[int, ...], high: int | torch.Tensor, generator: torch.Generator | None,
            device: torch.device) -> torch.Tensor:
    """Int64 samples uniform over {0, ..., high - 1}; ``high`` may be a per-sample tensor (values >= 1)."""
    u = torch.rand(shape, generator=generator, device=_draw_device(generator, device), dtype=torch.float64).to(device)
    if isinstance(high, torch.Tensor):
        high_t = high.to(device=device, dtype=torch.float64)
        return torch.minimum((u * high_t).long(), high.to(device).long() - 1)
    return (u * high).long().clamp_(max=high - 1)


def permutations(n_rows: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``n_rows`` independent random permutations of ``range(n)``, as an int64 tensor [n_rows, n]."""
    u = torch.rand((n_rows, n), generator=generator, device=_draw_device(generator, device))
    return u.argsort(dim=1).to(device)
