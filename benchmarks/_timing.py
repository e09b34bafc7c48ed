"""Timing helper shared by the benchmark scripts."""
from __future__ import annotations

import time
from typing import Callable

import torch


def clips_per_s(fn: Callable[[torch.Tensor], object], x: torch.Tensor, batch: int, repeats: int = 3) -> float:
    """Best-of-`repeats` throughput of `fn` over all of `x` in batches, after one warm-up (and compile) call."""
    with torch.inference_mode():
        fn(x[:batch])
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for i in range(0, len(x), batch):
                fn(x[i:i + batch])
            best = min(best, time.perf_counter() - t0)
    return len(x) / best
