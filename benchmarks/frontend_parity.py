"""Log-mel backend parity and throughput on real clips (run by hand; prints figures, asserts nothing).

    python benchmarks/frontend_parity.py [--data ../shared/data] [--n 200] [--batch 64]

Loads N real clips (half spcv2_12 16 kHz flac, half fsdd 8 kHz wav resampled to 16 kHz, spread over the folders),
then prints, in one run:
  - for each backend pair, the max and mean |difference| of the log-mel (nats) over the time-frequency bins whose
    librosa mel power is above 1e-8 x that clip's maximum (below it float32 STFT rounding and eps dominate), and
    the max over all bins for comparison;
  - each backend's throughput (clips/s, clips cropped or zero-padded to 1 s, batches of --batch, best of 3).
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import torch

from _timing import clips_per_s  # benchmarks/ is on sys.path when a script runs
from _data import SHARED_DATA
from byola.audio import load_audio
from byola.frontend import BACKENDS, LogMelSpectrogram

REL_FLOOR = 1e-8


def pick(files: list[Path], n: int) -> list[Path]:
    step = max(1, len(files) // max(n, 1))
    return files[::step][:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--n", type=int, default=200, help="number of real clips")
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    data = Path(args.data)
    files = (pick(sorted((data / "spcv2_12" / "audio").rglob("*.flac")), args.n - args.n // 2)
             + pick(sorted((data / "fsdd" / "audio").glob("*.wav")), args.n // 2))
    if not files:
        raise SystemExit(f"no clips under {data}")
    waves = [load_audio(p, 16000) for p in files]
    waves = [w for w in waves if w.numel() > 512]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(waves)} clips "
          f"({sum(w.numel() for w in waves) / 16000:.1f} s of audio)")

    fronts = {b: LogMelSpectrogram(backend=b) for b in BACKENDS}
    stats = {pair: [0.0, 0.0, 0, 0.0] for pair in itertools.combinations(BACKENDS, 2)}  # max, sum, count, max_all
    kept = total = 0
    with torch.inference_mode():
        for w in waves:
            out = {b: m(w)[0].double() for b, m in fronts.items()}
            power = out["librosa"].exp()
            mask = power > REL_FLOOR * power.amax()
            kept, total = kept + int(mask.sum()), total + mask.numel()
            for (a, b), s in stats.items():
                d = (out[a] - out[b]).abs()
                s[0] = max(s[0], d[mask].max().item())
                s[1] += d[mask].sum().item()
                s[2] += int(mask.sum())
                s[3] = max(s[3], d.max().item())
    print(f"\nparity (nats), on {kept / total:.1%} of the bins (power > {REL_FLOOR:g} x clip max):")
    print(f"{'pair':<24}{'max':>12}{'mean':>12}{'max, all bins':>16}")
    for (a, b), (mx, sm, n, mx_all) in stats.items():
        print(f"{a + ' vs ' + b:<24}{mx:>12.2e}{sm / n:>12.2e}{mx_all:>16.2e}")

    fixed = torch.stack([torch.nn.functional.pad(w[:16000], (0, max(0, 16000 - w.numel()))) for w in waves])
    print(f"\nthroughput, 1 s clips, batch {args.batch}:")
    rates = {b: clips_per_s(m, fixed, args.batch) for b, m in fronts.items()}
    for b, r in rates.items():
        print(f"{b:<12}{r:>10.0f} clips/s   ({r / rates['librosa']:.1f}x librosa)")


if __name__ == "__main__":
    main()
