"""Per-sample costs of BYOL-A pretraining that bound an AudioSet-scale run (docs/scaling.md), on this machine, one
thread.

    python benchmarks/scaling_costs.py [--clips 8] [--batch 32] [--d 3072] [--repeats 3]

1. Decoding: ``byola.audio.load_audio`` (decode + resample to 16 kHz mono) of generated 10 s AudioSet-like clips,
   44.1 kHz stereo, as FLAC and as MP3 (when libsndfile can write MP3); ms per clip.
2. Reading a random 0.95 s crop from the decoded cache (``RandomCropDataset(cache_dir=...)``, memory-mapped .npy,
   warm page cache); ms per sample.
3. Augmentation on this CPU (``AudioBatchViews``: log-mel, pre-norm, Mixup, Random Resize Crop, fader, post-norm; two
   views); ms per sample.
4. The model step of the v2 recipe (AudioNTT2022, projector/predictor 4096 -> 256, EMA target): floating-point
   operations per sample counted with ``torch.utils.flop_counter`` (forward + backward, the target's forward), and
   the measured CPU time per sample of one full step (forward, backward, Adam, EMA) at ``--batch``.
Medians over ``--repeats``.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.flop_counter import FlopCounterMode

from byola.audio import load_audio
from byola.augment.audio import AudioViews
from byola.data import RandomCropDataset
from byola.engine.methods import build_method
from byola.frontend import DEFAULT_BACKEND, LogMelSpectrogram
from byola.models import build_encoder
from byola.norm import PreNormalization
from byola.modalities.audio import AudioBatchViews


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def _clips(folder: Path, n: int, fmt: str) -> list[Path]:
    rng = np.random.default_rng(0)
    t = np.arange(10 * 44100) / 44100
    paths = []
    for i in range(n):
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)[:, None] + 0.05 * rng.standard_normal((t.size, 2))
        path = folder / f"clip{i}.{fmt}"
        sf.write(path, wave.astype(np.float32), 44100, format=fmt.upper())
        paths.append(path)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clips", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--d", type=int, default=3072)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"one thread, torch {torch.__version__}")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for fmt in ("flac", "mp3"):
            try:
                paths = _clips(tmp, args.clips, fmt)
            except (sf.LibsndfileError, TypeError, ValueError) as err:
                print(f"1. decode {fmt}: not measured ({err})")
                continue
            ms = _median_ms(lambda paths=paths: [load_audio(p) for p in paths], args.repeats) / len(paths)
            print(f"1. decode + resample, 10 s 44.1 kHz stereo {fmt}: {ms:.1f} ms/clip "
                  f"({1000 / ms:.0f} clips/s per core)")

        ds = RandomCropDataset(paths, unit_sec=0.95, cache_dir=tmp / "cache")
        for i in range(len(ds)):  # fill the cache
            ds[i]
        ms = _median_ms(lambda: [ds[i] for i in range(len(ds))], args.repeats) / len(ds)
        print(f"2. 0.95 s crop from the decoded cache (memory map): {ms:.3f} ms/sample")

    waves = torch.randn(args.batch, 15200) * 0.1
    views = AudioBatchViews(LogMelSpectrogram(backend=DEFAULT_BACKEND), PreNormalization(-8.0, 4.0),
                            AudioViews.byola("v2", generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        made, _ = views(waves)
        ms = _median_ms(lambda: views(waves), args.repeats) / args.batch
    print(f"3. augmentation (log-mel .. post-norm, 2 views) on this CPU: {ms:.2f} ms/sample")

    torch.manual_seed(0)
    engine = build_method("byola", build_encoder("AudioNTT2022", d=args.d), args.d,
                          projector_hidden=4096, projector_dim=256, predictor_hidden=4096)
    engine.to(memory_format=torch.channels_last)
    made = [v.contiguous(memory_format=torch.channels_last) for v in made]
    opt = torch.optim.Adam([p for p in engine.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        engine(made)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        engine.update_targets(0, 1)

    with FlopCounterMode(display=False) as counter:
        engine(made)["loss"].backward()
    opt.zero_grad(set_to_none=True)
    flops = counter.get_total_flops() / args.batch
    step()  # warm-up
    ms = _median_ms(step, args.repeats) / args.batch
    print(f"4. model step, AudioNTT2022 d={args.d} (v2 recipe heads): {flops / 1e9:.2f} GFLOP/sample "
          f"(forward + backward + target forward); CPU, batch {args.batch}: {ms:.1f} ms/sample")


if __name__ == "__main__":
    main()
