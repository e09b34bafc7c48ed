"""Sharded embedding throughput: 2 torchrun ranks, each pinned to one core with one thread, against 1 process
pinned to one core with one thread, on spcv2_12 (run by hand; prints figures, asserts nothing).

    python benchmarks/embed_shards.py [--data ../shared/data] [--repeats 1]

Both run the `byola embed` command with the shipped model (`--num_workers 0`: decoding and the model in the one
thread of each process), end to end: process start, model load, embedding, and for the ranks the gloo all-gather
and rank 0's merge. It prints clips/s of each, their ratio (issue 13's target: >= 1.8x), whether the two outputs
are byte-identical (embeddings.npy, index.csv, manifest.json), and the load average before and after (other work on
the machine takes cores from the ranks). Skips when the data is absent.
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
    embed = [sys.executable, "-m", "byola", "embed", str(audio), "--num_workers", "0", "--progress", "false"]
    print(f"spcv2_12: {audio}; cores {cores[0]} and {cores[1]}; load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    best = {"1 rank": float("inf"), "2 ranks": float("inf")}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            one, two = Path(tmp) / f"one{r}", Path(tmp) / f"two{r}"
            best["1 rank"] = min(best["1 rank"], _run(["taskset", "-c", str(cores[0]), *embed, "--out", str(one)],
                                                      env))
            rank_cmd = shlex.join(embed + ["--out", str(two)])
            pinned = f"exec taskset -c $(( LOCAL_RANK == 0 ? {cores[0]} : {cores[1]} )) {rank_cmd}"
            best["2 ranks"] = min(best["2 ranks"], _run(
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                 "--no-python", "bash", "-c", pinned], env))
            identical = all((one / name).read_bytes() == (two / name).read_bytes()
                            for name in ("embeddings.npy", "index.csv", "manifest.json"))
            n_clips = json.loads((one / "manifest.json").read_text())["files"]
            print(f"  run {r + 1}: {n_clips} clips, outputs byte-identical: {identical}")
    rates = {k: n_clips / v for k, v in best.items()}
    for name, rate in rates.items():
        print(f"{name:8s} {best[name]:7.1f} s  {rate:7.1f} clips/s (end to end, best of {args.repeats})")
    print(f"ratio 2 ranks / 1 rank: {rates['2 ranks'] / rates['1 rank']:.2f}x (target >= 1.8x)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
