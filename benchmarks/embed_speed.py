"""Embedding throughput and memory on this machine (run by hand; prints figures, asserts nothing).

    python benchmarks/embed_speed.py [--data ../shared/data] [--batch 256] [--hour]

For AudioNTT2020 d=512 (random weights: speed does not depend on them) it prints, in one run:
  (a) the encoder alone on precomputed log-mels, plain eager PyTorch (fp32, contiguous, BN unfused);
  (b) the encoder alone optimized (byola.models.optimize_for_inference) in one process, and as `embed` runs it
      on a CPU (in one single-threaded worker process per core), and the max relative difference from (a);
  (c) `embed_files` end to end (decoding, resampling, frontend, model) on spcv2_12 and esc50_f4;
(b)'s embed line and (c) run with `byola.runtime.keep_freed_memory()`, as the `byola` command does;
and with --hour, the peak resident memory of `byola embed` on a generated one-hour file, next to the same
command on a one-minute file.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import byola
from _timing import clips_per_s, parallel_clips_per_s  # benchmarks/ is on sys.path when a script runs
from _data import SHARED_DATA
from byola.audio import audio_duration, load_audio_if_shorter
from byola.checkpoint import save_checkpoint
from byola.frontend import LogMelSpectrogram
from byola.models import build_encoder, optimize_for_inference
from byola.norm import NormStats
from byola.runtime import keep_freed_memory


def _tree_pss_bytes(root: int) -> int:
    """Proportional resident memory (PSS: pages shared between processes counted once in all) of a process and
    all its descendants now, from /proc (Linux)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, ppid in parents.items() if ppid in tree} - tree
        tree, grew = tree | more, bool(more)
    total = 0
    for pid in tree:
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            total += int(rollup.split("\nPss:")[1].split()[0]) * 1024
        except OSError:
            pass
    return total


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """Peak resident memory (MB) of a command run in a fresh process: RSS of its largest process (getrusage), and
    PSS of all its processes together (worker processes included; sampled every 20 ms)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=False);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.Popen([sys.executable, "-c", code, *cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    total = 0
    while proc.poll() is None:
        total = max(total, _tree_pss_bytes(proc.pid))
        time.sleep(0.02)
    largest = int(proc.stdout.read().strip().splitlines()[-1]) / 1024
    return largest, total / 2 ** 20


def cost_split(files: list[Path], model: byola.Embedder, encoder: torch.nn.Module) -> None:
    """(d) What one single-threaded worker spends per clip on decoding, log-mel and encoder, and the share of the
    encoder: the most end to end can reach of the encoder-alone rate when every core runs such a worker."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    waves = [load_audio_if_shorter(f, 600.0) for f in files]
    decode = (time.perf_counter() - t0) / len(files)
    by_length: dict[int, list[torch.Tensor]] = {}
    for w in waves:
        by_length.setdefault(len(w), []).append(w)
    batches = [torch.stack(group[i:i + 16]) for group in by_length.values() for i in range(0, len(group), 16)]
    with torch.inference_mode():
        model._normalized_logmel(batches[0])
        t0 = time.perf_counter()
        mels = [model._normalized_logmel(b).unsqueeze(1) for b in batches]
        logmel = (time.perf_counter() - t0) / len(files)
        encoder(mels[0])
        t0 = time.perf_counter()
        for m in mels:
            encoder(m)
        enc = (time.perf_counter() - t0) / len(files)
    torch.set_num_threads(threads)
    print(f"(d)   one thread, per clip: decoding {decode * 1e3:.2f} ms, log-mel {logmel * 1e3:.2f} ms, encoder "
          f"{enc * 1e3:.2f} ms -> encoder share {enc / (decode + logmel + enc):.0%} (the ceiling of end to end / "
          "encoder alone)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hour", action="store_true", help="also measure peak memory on a one-hour file")
    parser.add_argument("--compile", action="store_true", help="end to end with `embed --compile`")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")

    tmp = Path(tempfile.mkdtemp(prefix="byola_bench_"))
    encoder = build_encoder("AudioNTT2020", n_mels=64, d=512).eval()
    ckpt = tmp / "ntt2020_d512.safetensors"
    save_checkpoint(ckpt, encoder, LogMelSpectrogram().config(), NormStats(mean=-6.0, std=5.0, count=1),
                    {"source": "benchmark, random init"})

    # (a) and (b): the encoder alone on 1-second log-mels.
    workers = len(os.sched_getaffinity(0))  # embed's default number of CPU workers
    mels = torch.randn(1024, 1, 64, 101)
    eager = clips_per_s(encoder, mels, args.batch)
    print(f"(a) encoder, plain eager fp32, one process, batch {args.batch}: {eager:8.1f} clips/s")
    for label, compiled, micro in (("no micro-batches", False, None), ("micro-batches of 16", False, 16),
                                   ("+ torch.compile", True, 16)):
        fast = optimize_for_inference(encoder, compile=compiled, micro_batch=micro)
        with torch.inference_mode():
            ref, got = encoder(mels[:args.batch]), fast(mels[:args.batch])
        rel = ((got - ref).abs().max() / ref.abs().max()).item()
        optimized = clips_per_s(fast, mels, args.batch)
        print(f"(b) encoder optimized, {label:20s}, one process:  {optimized:8.1f} clips/s = "
              f"{optimized / eager:.2f}x (a), max rel diff {rel:.1e}")
    fast = optimize_for_inference(encoder, compile=args.compile, micro_batch=16)
    # From here on, glibc keeps freed memory for reuse, as the `byola` command sets it (byola.runtime).
    keep_freed_memory()

    def encoder_as_embed(x: torch.Tensor) -> float:
        """The encoder alone as `embed` runs it on a CPU: micro-batches of 16 in `workers` 1-thread processes."""
        return parallel_clips_per_s(fast, x, args.batch, workers)

    parallel = encoder_as_embed(mels)
    print(f"(b) encoder as embed runs it ({workers} 1-thread worker processes, micro-batches of 16, keep_freed_memory"
          f"{', compiled' if args.compile else ''}): {parallel:8.1f} clips/s = {parallel / eager:.2f}x (a)")

    # (c) end to end.
    data = Path(args.data)
    for name, csv in (("spcv2_12", "spcv2_12/spcv2_12.csv"), ("esc50_f4", "esc50_f4/esc50_f4.csv")):
        meta = data / csv
        if not meta.exists():
            print(f"(c) {name}: skipped, {meta} not found")
            continue
        files = [meta.parent / line.split(",")[0] for line in meta.read_text().splitlines()[1:]]
        model = byola.load(ckpt, compile=args.compile)
        t0 = time.perf_counter()
        summary = model.embed_files(files, tmp / f"out_{name}", batch_size=args.batch, progress=False)
        elapsed = time.perf_counter() - t0
        audio_s = sum(audio_duration(f) for f in files)
        # The same clips through the encoder alone as embed runs it, for the end-to-end/encoder ratio.
        frames = model.frontend.n_frames(int(round(audio_s / len(files) * model.sample_rate)))
        enc_only = encoder_as_embed(torch.randn(min(len(files), 512), 1, 64, frames))
        print(f"(c) {name}: {summary.ok} clips ({summary.failed} failed) in {elapsed:.1f} s = "
              f"{summary.ok / elapsed:.1f} clips/s, {audio_s / elapsed:.1f} audio-s/s; encoder alone as embed runs "
              f"it on {frames}-frame clips {enc_only:.1f} clips/s -> end-to-end {summary.ok / elapsed / enc_only:.0%}"
              " of it")

        cost_split(files[:512], model, fast)

    if args.hour:
        for label, seconds in (("one minute", 60), ("one hour", 3600)):
            path = tmp / f"{seconds}s.wav"
            with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
                rng = np.random.default_rng(0)
                for _ in range(seconds // 60):
                    f.write((0.1 * rng.standard_normal(960000)).astype(np.float32))
            rss = peak_rss_mb([sys.executable, "-m", "byola", "embed", str(path), "--checkpoint", str(ckpt),
                               "--out", str(tmp / f"out_{seconds}"), "--progress", "False"])
            print(f"peak RSS, byola embed on a {label} file: {rss[0]:.0f} MB in its largest process, "
                  f"{rss[1]:.0f} MB PSS in all its processes together")
    print(f"(work files in {tmp})")


if __name__ == "__main__":
    main()
