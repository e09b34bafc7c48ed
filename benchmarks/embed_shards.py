"""Sharded embedding throughput: 2 torchrun ranks, each pinned to one core with one thread, against 1 process
pinned to one core with one thread, on spcv2_12 (run by hand; prints figures, asserts nothing).

    python benchmarks/embed_shards.py [--data ../shared/data] [--repeats 1]

Both run the `byola embed` command with the shipped model (`--num_workers 0`: decoding and the model in the one
thread of each process), end to end: process start, model load, embedding, and for the ranks the gloo all-gather
and rank 0's merge. It prints clips/s of each, end to end and for the embedding phase alone (from the first job's
settings file, written once the model is loaded, to the output's manifest, written last: for the ranks this includes
the all-gather and the merge), their ratios (issue 13's target: >= 1.8x),
whether the two outputs are byte-identical (embeddings.npy, index.csv, manifest.json), and the load average before
and after (other work on the machine takes cores from the ranks). Skips when the data is absent.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _data import SHARED_DATA  # benchmarks/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED_DATA)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each (alternating); the best is reported")
    args = ap.parse_args()
    audio = args.data / "spcv2_12" / "audio"
    if not audio.is_dir():
        print(f"skipped: {audio} not found (set BYOLA_SHARED_DATA or --data)")
        return
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        print(f"skipped: needs 2 cores, this process may use {cores}")
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"spcv2_12: {audio}; cores {cores[0]} and {cores[1]}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    def run(config: str, inputs: Path, out: Path) -> float:
        embed = [sys.executable, "-m", "byola", "embed", str(inputs), "--num_workers", "0", "--progress", "false",
                 "--out", str(out)]
        if config == "1 rank":
            return _run(["taskset", "-c", str(cores[0]), *embed], env)
        pinned = f"exec taskset -c $(( LOCAL_RANK == 0 ? {cores[0]} : {cores[1]} )) {shlex.join(embed)}"
        return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     "--no-python", "bash", "-c", pinned], env)

    configs = ("1 rank", "2 ranks")
    wall = {k: [] for k in configs}
    phase = {k: [] for k in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            outs = {config: Path(tmp) / f"{config[0]}-{r}" for config in configs}
            for config in configs:
                wall[config].append(run(config, audio, outs[config]))
                phase[config].append(_embedding_phase(outs[config]))
            identical = all((outs["1 rank"] / name).read_bytes() == (outs["2 ranks"] / name).read_bytes()
                            for name in ("embeddings.npy", "index.csv", "manifest.json"))
            n_clips = json.loads((outs["1 rank"] / "manifest.json").read_text())["files"]
            print(f"  run {r + 1}: {n_clips} clips, outputs byte-identical: {identical}; "
                  + "; ".join(f"{k}: {wall[k][-1]:.1f} s, embedding phase {phase[k][-1]:.1f} s" for k in configs))
    best_wall = {k: min(v) for k, v in wall.items()}
    best_phase = {k: min(v) for k, v in phase.items()}
    for name in configs:
        print(f"{name:8s} end to end {best_wall[name]:5.1f} s = {n_clips / best_wall[name]:6.1f} clips/s; embedding "
              f"phase {best_phase[name]:5.1f} s = {n_clips / best_phase[name]:6.1f} clips/s (best of {args.repeats})")
    print(f"ratio 2 ranks / 1 rank: {best_wall['1 rank'] / best_wall['2 ranks']:.2f}x end to end, "
          f"{best_phase['1 rank'] / best_phase['2 ranks']:.2f}x embedding phase (target >= 1.8x)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _embedding_phase(out: Path) -> float:
    """Seconds from the first job's start (its settings file, written once the model is loaded) to the output's
    manifest (written last; for torchrun ranks: after the all-gather and rank 0's merge)."""
    settings = [out / ".byola_embed" / "settings.json"] + list(out.glob("parts/*/.byola_embed/settings.json"))
    first = min(p.stat().st_mtime for p in settings if p.exists())
    return (out / "manifest.json").stat().st_mtime - first


if __name__ == "__main__":
    main()
