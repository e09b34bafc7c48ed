"""Per-rank vs global Mixup memory bank at 2 ranks: BYOL-A loss curves next to one process with the global batch.

    python benchmarks/mixup_global.py [--data DIR] [--steps 60] [--batch 16] [--bank 128] [--seeds 0 1]

Three short ``byola pretrain`` runs per seed (recipe ``byola_v2`` with a small encoder, CPU, one thread per process):
``1x2B`` (one process, batch 2B: the run the distributed ones should reproduce), ``2xB per-rank`` (torchrun, 2 gloo
processes of batch B, ``augment.mixup_global=false``: each process mixes with its own past samples) and
``2xB global`` (``augment.mixup_global=true``: every process's bank holds the last ``--bank`` samples of the global
batch stream). Both 2-process runs use ``train.sync_bn=true`` so that only the bank differs. The bank is scaled to the
batch as in the recipe (2048 slots for batch 256: 8 steps of history for one process). Augmentation draws are not the
same across runs (one generator per process), so the curves differ by sampling noise even when the banks hold the same
samples: the 1x2B run gives the scale of that noise. Prints mean losses over windows of steps and their ratios.
"""
from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _data import SHARED_DATA  # benchmarks/ is on sys.path when a script runs


def _overrides(args: argparse.Namespace, batch: int, mixup_global: bool, cache: Path, seed: int) -> list[str]:
    return [f"--seed={seed}", f"--train.steps={args.steps}", f"--train.batch_size={batch}", "--train.progress=false",
            "--train.checkpoint_every=100000", "--train.device=cpu", "--train.sync_bn=true",
            f"--augment.mixup_global={str(mixup_global).lower()}", f"--augment.bank_size={args.bank}",
            "--model.name=AudioNTT2020", f"--model.d={args.d}", f"--method.projector_hidden={2 * args.d}",
            f"--method.predictor_hidden={2 * args.d}", "--method.projector_dim=128", "--norm.max_samples=256",
            f"--data.num_workers={args.workers}", f"--data.cache_dir={cache}"]


def _run(args: argparse.Namespace, out: Path, processes: int, batch: int, mixup_global: bool, cache: Path,
         seed: int) -> list[float]:
    launcher = [sys.executable, "-m", "byola"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), "-m",
        "byola"]
    env = {**os.environ, "OMP_NUM_THREADS": str(2 // processes or 1)}
    cmd = [*launcher, "pretrain", args.data, "--recipe=byola_v2", f"--out={out}",
           *_overrides(args, batch, mixup_global, cache, seed)]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    with open(out / "log.csv", newline="") as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(SHARED_DATA / "berklee_unlabeled"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16, help="per process of the 2-process runs (B)")
    ap.add_argument("--bank", type=int, default=128, help="Mixup bank slots (recipe: 2048 for batch 256)")
    ap.add_argument("--d", type=int, default=256, help="AudioNTT2020 embedding size")
    ap.add_argument("--window", type=int, default=10, help="steps per printed mean")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers per process")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args()
    if not Path(args.data).exists():
        sys.exit(f"no data at {args.data} (give --data)")

    runs = {"1x2B": (1, 2 * args.batch, False), "2xB per-rank": (2, args.batch, False),
            "2xB global": (2, args.batch, True)}
    curves: dict[str, list[list[float]]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"  # decoded audio, filled by the first run
        for seed in args.seeds:
            for name, (processes, batch, mixup_global) in runs.items():
                out = Path(tmp) / f"{name.replace(' ', '_')}-{seed}"
                curves[name].append(_run(args, out, processes, batch, mixup_global, cache, seed))
                print(f"seed {seed} {name}: done", flush=True)

    print(f"\n{args.data}, {args.steps} steps, global batch {2 * args.batch}, bank {args.bank}, AudioNTT2020 "
          f"d={args.d}, seeds {args.seeds}; mean loss per window of {args.window} steps (averaged over seeds)")
    mean = {name: [statistics.fmean(c[i] for c in cs) for i in range(args.steps)] for name, cs in curves.items()}
    header = f"{'steps':>9} " + " ".join(f"{n:>13}" for n in runs) + f" {'global/per-rank':>16} {'per-rank/1x2B':>14}" \
             f" {'global/1x2B':>12}"
    print(header)
    for lo in range(0, args.steps, args.window):
        w = {n: statistics.fmean(mean[n][lo:lo + args.window]) for n in runs}
        print(f"{lo + 1:>4}-{min(lo + args.window, args.steps):<4} " + " ".join(f"{w[n]:13.4f}" for n in runs)
              + f" {w['2xB global'] / w['2xB per-rank']:16.4f} {w['2xB per-rank'] / w['1x2B']:14.4f}"
              f" {w['2xB global'] / w['1x2B']:12.4f}")
    for n in ("2xB per-rank", "2xB global"):
        diff = [abs(a - b) / b for a, b in zip(mean[n], mean["1x2B"])]
        print(f"{n}: mean |relative difference| to 1x2B over all steps {statistics.fmean(diff):.4f}")


if __name__ == "__main__":
    main()
