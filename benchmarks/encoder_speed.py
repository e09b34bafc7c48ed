"""Encoder-only inference throughput of AudioNTT2020 on random log-mels, eager vs. inference rewrites.

Every variant runs on the same input in the same process; rounds are interleaved (variant A, B, C, A, B, C, ...)
so that load from other processes hits all variants alike, and the best round of each is reported next to its
median. Ratios are against plain eager fp32 measured in this run. ``clips/cpu-s`` divides by the process's CPU time
(all threads) instead of wall time: on a shared, oversubscribed machine it shows the work per clip that wall time
hides. ``max rel diff`` is max|y - y_eager| / max|y_eager| of the clip embeddings.

    python benchmarks/encoder_speed.py                     # [256, 1, 64, 101] = 256 one-second clips, d=512
    python benchmarks/encoder_speed.py --micro 16,32,64    # also split the batch into micro-batches
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Callable

import torch

from byola.models import AudioNTT2020, optimize_for_inference


def timed(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn(x)
    return time.perf_counter() - t0, time.process_time() - c0


def jit_frozen(model: torch.nn.Module, x: torch.Tensor) -> Callable:
    """TorchScript trace + freeze + optimize_for_inference (oneDNN/MKLDNN graph rewrites), for comparison."""
    with torch.inference_mode(False), torch.no_grad():
        traced = torch.jit.trace(model, x[:2])
        return torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--frames", type=int, default=101, help="log-mel frames per clip (101 = 1 s)")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    ap.add_argument("--micro", default="", help="comma-separated micro-batch sizes for the optimized model")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    ap.add_argument("--jit", action="store_true", help="also time TorchScript freeze + optimize_for_inference")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AudioNTT2020(d=args.d).eval()
    for m in model.modules():  # trained-like BN statistics, so folding is not a no-op
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.normal_(1, 0.2)
            m.bias.data.normal_(0, 0.2)
    x = torch.randn(args.batch, 1, 64, args.frames) * 2 - 5

    variants: dict[str, Callable] = {"eager fp32": model}
    off = dict(fold_bn=False, channels_last=False, reorder_pool=False)
    variants["+ channels-last"] = optimize_for_inference(model, **off | {"channels_last": True})
    variants["+ BN folding"] = optimize_for_inference(model, **off | {"fold_bn": True})
    variants["+ pool before ReLU"] = optimize_for_inference(model, **off | {"reorder_pool": True})
    variants["+ channels-last + BN folding"] = optimize_for_inference(model, **off | {"channels_last": True,
                                                                                     "fold_bn": True})
    variants["optimize_for_inference (all three)"] = optimize_for_inference(model)
    for size in [int(s) for s in args.micro.split(",") if s]:
        variants[f"optimize_for_inference, micro-batch {size}"] = optimize_for_inference(model, micro_batch=size)
    if not args.no_compile:
        variants["+ torch.compile"] = optimize_for_inference(model, **off | {"compile": True})
        variants["optimize_for_inference + torch.compile"] = optimize_for_inference(model, compile=True)
        variants["optimize_for_inference + compile max-autotune"] = optimize_for_inference(
            model, compile=True, compile_mode="max-autotune")
        for size in [int(s) for s in args.micro.split(",") if s]:
            variants[f"optimize_for_inference + compile, micro-batch {size}"] = optimize_for_inference(
                model, compile=True, micro_batch=size)
    if args.jit:
        variants["TorchScript freeze + optimize_for_inference"] = jit_frozen(model, x)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"input {list(x.shape)}, AudioNTT2020 d={args.d}, load average {os.getloadavg()[0]:.1f}", flush=True)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    diffs: dict[str, float] = {}
    with torch.inference_mode():
        ref = model(x)
        scale = ref.abs().max()
        for name, fn in variants.items():  # warm-up (compiles) and correctness
            t0 = time.perf_counter()
            out = fn(x)
            diffs[name] = ((out - ref).abs().max() / scale).item()
            print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
        for _ in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(timed(fn, x))
    def rates(name: str) -> tuple[float, float, float]:
        wall, cpu = [t[0] for t in times[name]], [t[1] for t in times[name]]
        return args.batch / min(wall), args.batch / statistics.median(wall), args.batch / min(cpu)

    base, _, base_cpu = rates("eager fp32")
    print(f"\n{'variant':52s} {'best clips/s':>12s} {'median':>8s} {'x eager':>8s} {'clips/cpu-s':>12s} "
          f"{'x eager':>8s} {'max rel diff':>13s}")
    for name in times:
        best, med, cpu = rates(name)
        print(f"{name:52s} {best:12.1f} {med:8.1f} {best / base:8.2f} {cpu:12.1f} {cpu / base_cpu:8.2f} "
              f"{diffs[name]:13.2e}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
