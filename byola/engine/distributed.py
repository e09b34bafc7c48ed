"""Processes under ``torchrun``: this process's rank layout (:func:`dist_info`), its default device, and
:func:`process_group`, the one place byola makes and ends a process group (modality-free)."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterator

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "dist_info", "default_device", "process_group"]


@dataclass(frozen=True)
class DistInfo:
    """Rank layout of this process (``torchrun`` environment variables; single process when absent)."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """The process's rank, local rank and world size, from ``torchrun``'s environment (``RANK``, ``LOCAL_RANK``,
    ``WORLD_SIZE``) or from an initialized process group."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)))


def default_device() -> torch.device:
    """``cuda:LOCAL_RANK`` when CUDA is available, else CPU. Raises ``RuntimeError`` when this process's local rank
    has no GPU (more processes per node than GPUs)."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local_rank, count = dist_info().local_rank, torch.cuda.device_count()
    if local_rank >= count:
        raise RuntimeError(f"LOCAL_RANK {local_rank} has no GPU: this node has {count} CUDA device(s); start at most "
                           f"{count} process(es) per node, or train on the CPU (--train.device=cpu)")
    return torch.device(f"cuda:{local_rank}")


@contextlib.contextmanager
def process_group(device: torch.device | str, timeout: timedelta | None = None) -> Iterator[DistInfo]:
    """The one place byola starts and ends a process group: for the ``with`` block, the default group from
    ``torchrun``'s environment when ``WORLD_SIZE > 1`` and none exists (nccl for a CUDA device, else gloo;
    ``timeout``: how long a collective waits, default PyTorch's), destroyed when the block ends. A single process, or
    a group that already exists (made by an enclosing block or by the caller), is left as it is, so blocks nest.
    Yields this process's :class:`DistInfo`."""
    device = torch.device(device)
    created = dist_info().world_size > 1 and not dist.is_initialized()
    if created:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout)
    try:
        yield dist_info()
    finally:
        if created:
            dist.destroy_process_group()
