"""Pretraining throughput of BYOL-A (AudioNTT2020 d=512, batch 64 by default), split into data, augmentation and model
time, for several ways of running the model step, each next to the plain eager PyTorch step measured in the same run.

    python benchmarks/pretrain_speed.py [--data DIR] [--batch 64] [--steps 4] [--workers 2] [--variants ...]

1. Data: a DataLoader over RandomCropDataset (real audio: ../shared/data/berklee_unlabeled when present, else
   generated tones), first pass decoding (and filling a decoded cache), second pass from the cache; samples/s.
2. Step split on fixed batches: augmentation (log-mel, pre-norm, Mixup, RRC, fader, post-norm: AudioBatchViews) and
   the model step (forward, backward, Adam, EMA) per variant: ``eager`` (plain PyTorch, float32, contiguous),
   ``channels_last``, ``compile`` (torch.compile of the encoder), ``channels_last+compile``, ``bf16`` (autocast;
   CUDA, and CPUs with native bf16 (byola.precision), or any CPU when asked). Variants run round-robin, step by
   step, from the same initial weights with the same views and dropout seeds, so their loss curves are compared (max
   relative difference to eager) and slow drifts of a shared machine's load hit every variant alike. Times are
   medians over the steps after the first (warm-up). The variants run twice, each time in a child process: with
   glibc's default allocator and with ``byola.runtime.keep_freed_memory`` (freed memory kept for reuse, as the
   ``byola`` command sets it).
3. The full Trainer with the fastest variant for a few steps: data wait, augmentation and step time per step, from
   its CSV log.
"""
from __future__ import annotations

import argparse
import copy
import csv
import multiprocessing as mp
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from byola.augment.audio import AudioViews
from byola.data import RandomCropDataset, scan_corpus
from byola.engine.methods import build_method
from byola.engine.trainer import Trainer
from byola.frontend import DEFAULT_BACKEND, LogMelSpectrogram
from byola.models import build_encoder
from byola.norm import PreNormalization
from byola.modalities.audio import AudioBatchViews
from byola.precision import cpu_has_native_bf16, cpu_model, native_bf16
from byola.runtime import keep_freed_memory
from _data import SHARED_DATA  # benchmarks/ is on sys.path when a script runs



def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def corpus_files(data: str | None, n: int, tmp: Path) -> tuple[list[str], str]:
    if data:
        return scan_corpus([data])[:n], data
    berklee = SHARED_DATA / "berklee_unlabeled"
    if berklee.exists():
        return scan_corpus([berklee])[:n], str(berklee.resolve())
    rng = np.random.default_rng(0)
    for i in range(n):
        t = np.arange(int(16000 * (1 + i % 5))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (100 + 10 * i) * t) + 0.05 * rng.standard_normal(t.shape)
        sf.write(tmp / f"tone{i:04d}.wav", wave.astype(np.float32), 16000)
    return scan_corpus([tmp]), "generated tones"


def data_throughput(ds: RandomCropDataset, batch: int, workers: int) -> tuple[float, float]:
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, drop_last=True)
    rates = []
    for _ in range(2):  # cold (decode + fill cache), warm (memory-mapped cache)
        t0 = time.perf_counter()
        n = sum(len(b) for b in loader)
        rates.append(n / (time.perf_counter() - t0))
    return rates[0], rates[1]


def make_views_module(device: torch.device, seed: int, backend: str) -> AudioBatchViews:
    frontend = LogMelSpectrogram(backend=backend)
    views = AudioViews.byola("v2", generator=torch.Generator(device=device).manual_seed(seed))
    return AudioBatchViews(frontend, PreNormalization(-8.0, 4.0), views).to(device)


def build_engine(d: int, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method("byola", build_encoder("AudioNTT2020", d=d), d).to(device)


class Variant:
    def __init__(self, name: str, base: torch.nn.Module, device: torch.device) -> None:
        self.name, self.device = name, device
        self.engine = copy.deepcopy(base)
        self.channels_last = "channels_last" in name
        if self.channels_last:
            self.engine.to(memory_format=torch.channels_last)
        if "compile" in name:
            self.engine.encoder.compile()
        self.amp = torch.bfloat16 if "bf16" in name else None
        self.opt = torch.optim.Adam([p for p in self.engine.parameters() if p.requires_grad], lr=1e-4)
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, views: list[torch.Tensor], k: int, total: int) -> None:
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        torch.manual_seed(1000 + k)  # same dropout masks in every variant
        _sync(self.device)
        t0 = time.perf_counter()
        with torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None):
            loss = self.engine(views)["loss"]
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.engine.update_targets(k, total)
        _sync(self.device)
        self.times.append(time.perf_counter() - t0)
        self.losses.append(loss.item())


def _variants_child(state: dict, d: int, names: list[str], device: str, all_views: list[list[torch.Tensor]],
                    allocator: str, results: mp.SimpleQueue) -> None:
    if allocator == "keep_freed_memory":
        keep_freed_memory()
    base = build_engine(d, torch.device(device))
    base.load_state_dict(state)
    runs = [Variant(name, base, torch.device(device)) for name in names]
    for k, views in enumerate(all_views):
        for run in runs:
            run.step(views, k, len(all_views))
    results.put([(run.times, run.losses) for run in runs])


def run_variants(base: torch.nn.Module, d: int, names: list[str], device: torch.device,
                 all_views: list[list[torch.Tensor]], allocator: str) -> list[tuple[str, list[float], list[float]]]:
    """Run the variants round-robin on the same views in a child process (spawned: OpenMP does not survive a fork),
    with glibc's default allocator or with `byola.runtime.keep_freed_memory`; returns (name, times, losses)."""
    ctx = mp.get_context("spawn")
    results = ctx.SimpleQueue()
    views = [[v.cpu() for v in vs] for vs in all_views]
    proc = ctx.Process(target=_variants_child, args=({k: v.cpu() for k, v in base.state_dict().items()}, d, names,
                                                     str(device), views, allocator, results))
    proc.start()
    measured = results.get()
    proc.join()
    suffix = "" if allocator == "default" else f"+{allocator}"
    return [(name + suffix, times, losses) for name, (times, losses) in zip(names, measured)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=None, help="audio folder (default: berklee_unlabeled or generated tones)")
    ap.add_argument("--files", type=int, default=128, help="files used for the data measurement")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--steps", type=int, default=4, help="steps per variant (the first is warm-up)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--trainer-steps", type=int, default=4)
    ap.add_argument("--variants", nargs="+", default=None,
                    help="eager channels_last compile channels_last+compile bf16 (default: all but bf16 on CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frontend", default=DEFAULT_BACKEND,
                    help="log-mel backend of the augmentation step (the recipes' default; nnaudio is also timed)")
    args = ap.parse_args()
    device = torch.device(args.device)
    # torch.compile measured no gain on a 2-core CPU (and takes minutes there): on CPU, ask for it with --variants.
    # bf16 autocast on a CPU only where it is native (avx512_bf16/AMX): elsewhere it is emulated and slower.
    variants = args.variants or (["eager", "channels_last", "bf16", "channels_last+bf16", "channels_last+bf16+compile"]
                                 if device.type == "cuda" else
                                 ["eager", "channels_last"] + (["channels_last+bf16"] if native_bf16(device) else []))
    if variants[0] != "eager":
        variants = ["eager"] + [v for v in variants if v != "eager"]
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'CPU'}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"AudioNTT2020 d={args.d}, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.1f})")
    print(f"CPU {cpu_model()}: native bf16 {'yes' if cpu_has_native_bf16() else 'no (no avx512_bf16/amx_bf16)'}; "
          f"{device} native bf16: {'yes' if native_bf16(device) else 'no'}"
          + ("" if native_bf16(device) or "bf16" in " ".join(variants) else
             " -> bf16 step not measured (emulated here; ask with --variants eager channels_last+bf16)"))

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        files, source = corpus_files(args.data, args.files, tmp)
        ds = RandomCropDataset(files, cache_dir=tmp / "cache")
        cold, warm = data_throughput(ds, args.batch, args.workers)
        print(f"\n[data] {len(ds)} files of {source}, {args.workers} workers: {cold:.1f} samples/s decoding "
              f"(first pass, fills the cache), {warm:.1f} samples/s from the decoded cache")

        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, num_workers=args.workers, drop_last=True)
        batches = []
        while len(batches) < args.steps:
            epoch = list(loader)
            if not epoch:
                raise SystemExit(f"{len(ds)} files make no full batch of {args.batch}: give more --files")
            batches.extend(epoch)
        batches = [b.to(device) for b in batches[:args.steps]]

        with torch.no_grad():  # the two log-mel backends (numerically equivalent: Slaney mel scale and norm)
            fe_times = {}
            for backend in ("nnaudio", "torchaudio"):
                fe = LogMelSpectrogram(backend=backend).to(device)
                fe(batches[0])
                _sync(device)
                t0 = time.perf_counter()
                for b in batches:
                    fe(b)
                _sync(device)
                fe_times[backend] = (time.perf_counter() - t0) / len(batches)
        make_views = make_views_module(device, 0, args.frontend)
        aug_times, all_views = [], []
        with torch.no_grad():
            for b in batches:
                _sync(device)
                t0 = time.perf_counter()
                views, _ = make_views(b)
                _sync(device)
                aug_times.append(time.perf_counter() - t0)
                all_views.append(views)
        aug = statistics.median(aug_times[1:] or aug_times)

        base = build_engine(args.d, device)
        runs = []
        for allocator in ("default", "keep_freed_memory"):  # a process-wide setting: one child process each
            runs += run_variants(base, args.d, variants, device, all_views, allocator)
        print(f"\n[step] log-mel front end per batch: nnaudio {fe_times['nnaudio'] * 1e3:.0f} ms, torchaudio "
              f"{fe_times['torchaudio'] * 1e3:.0f} ms; augmentation with {args.frontend} (log-mel, pre-norm, views, "
              f"post-norm) {aug * 1e3:.0f} ms per batch (median; same for every variant)")
        print(f"{'variant':34s} {'model ms':>9s} {'samples/s':>10s} {'vs eager':>9s} {'aug share':>10s} "
              f"{'max |Δloss|/loss':>17s}")
        medians = {name: statistics.median(times[1:] or times) for name, times, _ in runs}
        eager_losses = runs[0][2]
        eager_total = medians["eager"] + aug
        for name, _, losses in runs:
            total = medians[name] + aug
            diff = max(abs(a - b) / abs(b) for a, b in zip(losses, eager_losses))
            print(f"{name:34s} {medians[name] * 1e3:9.0f} {args.batch / total:10.1f} {eager_total / total:8.2f}x "
                  f"{aug / total:9.1%} {diff:17.2e}")
        best = min(medians, key=medians.get)
        print("loss curves (first steps): " + "; ".join(
            f"{name}: " + ", ".join(f"{v:.5f}" for v in losses) for name, _, losses in runs))

        # The full pipeline through the Trainer with the fastest variant: how long each step waits for data.
        if args.trainer_steps > 0:
            if "keep_freed_memory" in best:
                keep_freed_memory()
            engine = build_engine(args.d, device)
            if "channels_last" in best:
                engine.to(memory_format=torch.channels_last)
            if "compile" in best:
                engine.encoder.compile()
            mv = make_views_module(device, 0, args.frontend)
            mv.channels_last = "channels_last" in best
            run_dir = tmp / "run"
            Trainer(engine, lambda p: torch.optim.Adam(p, lr=1e-4), ds, mv, run_dir, batch_size=args.batch,
                    steps=args.trainer_steps, num_workers=args.workers, device=device, progress=False,
                    amp="bf16" if "bf16" in best else "off", sync_timing=True,
                    checkpoint_every=10 ** 9).fit()
            with open(run_dir / "log.csv", newline="") as f:
                rows = list(csv.DictReader(f))[1:] or []
            if rows:
                med = {k: statistics.median(float(r[k]) for r in rows) for k in ("data_wait_s", "views_s", "step_s")}
                print(f"\n[trainer, {best}] per step (median of {len(rows)} after warm-up): data wait "
                      f"{med['data_wait_s'] * 1e3:.0f} ms, augmentation {med['views_s'] * 1e3:.0f} ms, "
                      f"whole step {med['step_s'] * 1e3:.0f} ms -> {args.batch / med['step_s']:.1f} samples/s; "
                      f"data wait {med['data_wait_s'] / med['step_s']:.1%} of the step")


if __name__ == "__main__":
    main()
