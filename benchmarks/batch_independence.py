"""How much a clip's embedding depends on the clips it is batched with (run by hand; prints figures, asserts nothing).

    OMP_NUM_THREADS=1 python benchmarks/batch_independence.py [--data ../shared/data] [--dataset berklee_unlabeled]
        [--seconds 0.5,0.7,1,2,3,5] [--n 32] [--batches 2,3,8,32]

Embeds N real clips of DATASET, cropped or zero-padded to each length, with the shipped model, each alone and in
batches of each size, and prints per length the max |difference| from the clip alone (absolute, and relative to the
largest |component|) for the plain encoder (``optimize=False``) and the default optimized one (``byola.load()``).
The README's batching figures ("Embedding audio") come from here.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from _data import SHARED_DATA  # benchmarks/ is on sys.path when a script runs
import byola
from byola.audio import AUDIO_EXTENSIONS, crop_or_pad, load_audio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--dataset", default="berklee_unlabeled", help="a folder of --data")
    parser.add_argument("--seconds", default="0.5,0.7,1,2,3,5", help="comma-separated clip lengths")
    parser.add_argument("--n", type=int, default=32, help="number of real clips")
    parser.add_argument("--batches", default="2,3,8,32", help="comma-separated batch sizes")
    args = parser.parse_args()
    files = sorted(p for p in (Path(args.data) / args.dataset).rglob("*") if p.suffix in AUDIO_EXTENSIONS)
    files = files[::max(1, len(files) // args.n)][:args.n]
    if not files:
        raise SystemExit(f"no {args.dataset} clips under {args.data}")
    clips = [load_audio(p) for p in files]
    sizes = [int(b) for b in args.batches.split(",")]
    models = {"plain encoder": byola.load(optimize=False), "optimized (default)": byola.load()}
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, {len(clips)} {args.dataset} clips, "
          f"batches {sizes}; max |batched - alone| (relative to the largest |component|)")
    print(f"{'seconds':>8}" + "".join(f"{label:>34}" for label in models))
    worst = dict.fromkeys(models, (0.0, 0.0))
    for seconds in map(float, args.seconds.split(",")):
        waves = torch.stack([crop_or_pad(c, round(seconds * 16000)) for c in clips])
        row = f"{seconds:>8g}"
        for label, model in models.items():
            with torch.inference_mode():
                alone = torch.cat([model.embed_batch(w[None]) for w in waves])
                diff = max((torch.cat([model.embed_batch(chunk) for chunk in waves.split(b)]) - alone).abs().max()
                           .item() for b in sizes)
            rel = diff / alone.abs().max().item()
            worst[label] = max(worst[label], (diff, rel))
            row += f"{diff:>22.2e} ({rel:.2e})"
        print(row)
    print(f"{'max':>8}" + "".join(f"{d:>22.2e} ({r:.2e})" for d, r in worst.values()))


if __name__ == "__main__":
    main()
