"""Sharded embedding throughput: 2 torchrun ranks, each pinned to one core with one thread, against 1 process
pinned to one core with one thread, on spcv2_12 (run by hand; prints figures, asserts nothing).

    python benchmarks/embed_shards.py [--data ../shared/data] [--repeats 1]

Both run the `byola embed` command with the shipped model (`--num_workers 0`: decoding and the model in the one
thread of each process), end to end: process start, model load, embedding, and for the ranks the gloo all-gather
and rank 0's merge. It prints clips/s of each, end to end and without the start-up cost (the same command on 2
clips: process and torchrun start, imports, model load, rendezvous, merge), their ratios (issue 13's target: >= 1.8x),
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
    best = dict.fromkeys(configs, float("inf"))
    start_up = dict.fromkeys(configs, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        two_clips = Path(tmp) / "two_clips.txt"  # start-up cost: the same command on 2 clips (one per rank)
        two_clips.write_text("\n".join(sorted(str(p) for p in audio.rglob("*.flac"))[:2]) + "\n")
        for r in range(args.repeats):
            for config in configs:
                best[config] = min(best[config], run(config, audio, Path(tmp) / f"{config[0]}-{r}"))
                start_up[config] = min(start_up[config], run(config, two_clips, Path(tmp) / f"{config[0]}-s{r}"))
            one, two = Path(tmp) / f"1-{r}", Path(tmp) / f"2-{r}"
            identical = all((one / name).read_bytes() == (two / name).read_bytes()
                            for name in ("embeddings.npy", "index.csv", "manifest.json"))
            n_clips = json.loads((one / "manifest.json").read_text())["files"]
            print(f"  run {r + 1}: {n_clips} clips, outputs byte-identical: {identical}")
    rates = {k: n_clips / v for k, v in best.items()}
    steady = {k: (n_clips - 2) / (best[k] - start_up[k]) for k in configs}
    for name in configs:
        print(f"{name:8s} {best[name]:6.1f} s end to end: {rates[name]:6.1f} clips/s; start-up (2 clips) "
              f"{start_up[name]:4.1f} s; without it {steady[name]:6.1f} clips/s (best of {args.repeats})")
    print(f"ratio 2 ranks / 1 rank: {rates['2 ranks'] / rates['1 rank']:.2f}x end to end, "
          f"{steady['2 ranks'] / steady['1 rank']:.2f}x without start-up (target >= 1.8x)")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
