"""Timing helper shared by the benchmark scripts."""
from __future__ import annotations

import multiprocessing as mp
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


def parallel_clips_per_s(fn: Callable[[torch.Tensor], object], x: torch.Tensor, batch: int, workers: int,
                         repeats: int = 3) -> float:
    """Combined throughput of `workers` forked processes with one torch thread each, all running `fn` over all of
    `x` in batches at the same time (after a warm-up call each), as `byola embed`'s CPU workers do."""
    ctx = mp.get_context("fork")
    barrier, results = ctx.Barrier(workers), ctx.SimpleQueue()

    def run() -> None:
        torch.set_num_threads(1)
        with torch.inference_mode():
            fn(x[:batch])
            barrier.wait()
            t0 = time.perf_counter()
            for _ in range(repeats):
                for i in range(0, len(x), batch):
                    fn(x[i:i + batch])
            results.put(repeats * len(x) / (time.perf_counter() - t0))

    procs = [ctx.Process(target=run) for _ in range(workers)]
    for p in procs:
        p.start()
    rates = [results.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(rates)
