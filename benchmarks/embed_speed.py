"""Embedding throughput and memory on this machine (run by hand; prints figures, asserts nothing).

    python benchmarks/embed_speed.py [--data ../shared/data] [--batch 256] [--memory [--baseline_src DIR]]

For AudioNTT2020 d=512 (random weights: speed does not depend on them) it prints, in one run:
  (a) the encoder alone on precomputed log-mels, plain eager PyTorch (fp32, contiguous, BN unfused);
  (b) the encoder alone optimized (byola.models.optimize_for_inference) in one process, and as `embed` runs it
      on a CPU (in one single-threaded worker process per core), and the max relative difference from (a);
  (c) `embed_files` end to end (decoding, resampling, frontend, model) on spcv2_12 and esc50_f4;
(b)'s embed line and (c) run with `byola.runtime.keep_freed_memory()`, as the `byola` command does.
It starts with the CPU model and whether it has native bf16 (byola.precision).

  --memory     (m) peak memory of `byola embed` as a user runs it, in two measures: the resident memory (RSS) of
               its largest process (getrusage; pages shared with other processes counted in full), and the
               proportional memory (PSS, shared pages split between the processes sharing them) of all its
               processes together (main process and worker processes, sampled every 20 ms). Cases: esc50_f4 with
               statistics computed from the inputs (checkpoint without statistics: the statistics pass keeps the
               decoded waveforms for the embedding pass, and worker processes embed), a generated one-hour file
               and, for reference, a one-minute one (statistics given); each --rounds times.
               --baseline_src DIR also runs each case with the byola package of DIR (a checkout of another
               version, e.g. `git archive main | tar -x -C DIR`) on PYTHONPATH, interleaved: before/after figures
               from one run.

  --precision  (e) the optimized encoder in fp32 and under bf16 autocast (one process, all threads): clips/s, the
               ratio and the minimum cosine similarity to fp32; and the encoder's steady state in FLOP/s (FLOPs
               counted by torch.utils.flop_counter) as a share of this CPU's peak: cores x clock x FLOP/cycle,
               where FLOP/cycle per core is 2 FMA units x vector lanes x 2 (AVX2: 32 fp32; AMD Zen 1 executes
               256-bit FMAs as two 128-bit halves: 16; AVX-512: 64); bf16 peak: avx512_bf16 (VDPBF16PS) 128,
               AMX-BF16 1024 (Intel's figure per core), none without native bf16.
  --cli        (g) whole processes as a user runs them (median of --rounds, interleaved): `byola --help`,
               `python -c "import torch"` (the floor), `byola embed` on one 1-s file; `byola embed` on spcv2_12 with
               statistics given vs computed from the inputs (checkpoint without statistics: one decoding pass),
               and with --precision bf16 (peak memory: --memory).
               --official "CMD" times CMD the same way, interleaved with byola's spcv2_12 run (statistics
               computed), and prints byola's speed as a multiple of it and the ceiling this CPU puts on that
               multiple (the encoder alone, plus `import torch`). The official BYOL-A pipeline is not part of this
               project; whoever has it writes CMD to embed the same 2,706 files with the official v1 weights,
               computing statistics from the files as byola does, and passes --checkpoint with the same weights
               converted by `byola convert`: docs/performance.md says how.
  --load       (h) `byola embed` on spcv2_12 (statistics computed) alone, and while a competing CPU-bound job
               (`byola embed` of the same files in a loop, started first) runs throughout: seconds and the
               slow-down; with --official, the official pipeline the same way, and byola's speed as a multiple of
               it alone and under the same load.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
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
from byola.checkpoint import load_checkpoint, save_checkpoint
from byola.frontend import LogMelSpectrogram
from byola.models import build_encoder, optimize_for_inference
from byola.norm import NormStats
from byola.precision import autocast, cpu_flags, cpu_has_native_bf16, cpu_model
from byola.runtime import keep_freed_memory
from torch.utils.flop_counter import FlopCounterMode


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


def peak_rss_mb(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[float, float]:
    """Peak resident memory (MB) of a command run in a fresh process: RSS of its largest process (getrusage), and
    PSS of all its processes together (worker processes included; sampled every 20 ms)."""
    code = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=False);"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    proc = subprocess.Popen([sys.executable, "-c", code, *cmd], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=env, cwd=cwd)
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


def cpu_peaks() -> tuple[float, float | None, str]:
    """(fp32 peak FLOP/s, bf16 peak FLOP/s or None, how) of the CPUs this process may use (see the docstring)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    field = {line.split(":")[0].strip(): line.split(":", 1)[1].strip() for line in info.splitlines() if ":" in line}
    flags = cpu_flags()
    cores = len(os.sched_getaffinity(0))
    ghz = float(field.get("cpu MHz", "nan")) / 1e3
    zen1 = field.get("vendor_id") == "AuthenticAMD" and field.get("cpu family") == "23" and \
        int(field.get("model", "0")) < 0x30
    per_cycle = 64 if "avx512f" in flags else (16 if zen1 else 32) if "fma" in flags else 8
    bf16_cycle = 1024 if "amx_bf16" in flags else 128 if "avx512_bf16" in flags else None
    how = (f"{cores} cores x {ghz:.2f} GHz x {per_cycle} fp32 FLOP/cycle"
           f"{' (Zen 1: 128-bit FMA units)' if zen1 else ''}"
           + (f", bf16 {bf16_cycle} FLOP/cycle" if bf16_cycle else ", no native bf16"))
    return cores * ghz * 1e9 * per_cycle, (cores * ghz * 1e9 * bf16_cycle if bf16_cycle else None), how


def precision_figures(encoder: torch.nn.Module, mels: torch.Tensor, batch: int) -> None:
    """(e) fp32 vs bf16 autocast on the optimized encoder, and FLOP/s vs this CPU's peaks."""
    fast = optimize_for_inference(encoder, micro_batch=16)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        fast(mels[:16])
    flops_per_clip = counter.get_total_flops() / 16
    rates, outs = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        def run(x: torch.Tensor, dtype: torch.dtype = dtype) -> torch.Tensor:
            with autocast(dtype, "cpu"):
                return fast(x).float()
        rates[name] = clips_per_s(run, mels, batch)
        with torch.inference_mode():
            outs[name] = run(mels[:batch])
    cos = torch.nn.functional.cosine_similarity(outs["fp32"], outs["bf16"], dim=1).min().item()
    peak32, peak16, how = cpu_peaks()
    native = "native" if cpu_has_native_bf16() else "EMULATED (no native bf16: slower, not a bf16 figure)"
    print(f"(e) encoder optimized, one process, batch {batch}: fp32 {rates['fp32']:.1f} clips/s, bf16 {native} "
          f"{rates['bf16']:.1f} clips/s = {rates['bf16'] / rates['fp32']:.2f}x fp32, min cosine to fp32 {cos:.6f}")
    for name, peak in (("fp32", peak32), ("bf16", peak16)):
        achieved = rates[name] * flops_per_clip
        share = f"{achieved / peak:.0%} of the {peak / 1e9:.0f} GFLOP/s {name} peak" if peak else "no bf16 peak"
        print(f"(e) {name}: {flops_per_clip / 1e6:.0f} MFLOP/clip x {rates[name]:.1f} clips/s = "
              f"{achieved / 1e9:.1f} GFLOP/s = {share}")
    print(f"(e) peak = {how}")


def _wall(cmd: list[str] | str) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=isinstance(cmd, str), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _byola(*args: str) -> list[str]:
    return [sys.executable, "-m", "byola", *args]


def _spcv2_files(data: Path, tmp: Path) -> Path | None:
    meta = data / "spcv2_12" / "spcv2_12.csv"
    if not meta.exists():
        return None
    listing = tmp / "spcv2_12.txt"
    listing.write_text("\n".join(str(meta.parent / line.split(",")[0]) for line in meta.read_text().splitlines()[1:]))
    return listing


def cli_figures(data: Path, tmp: Path, ckpt: Path, ckpt_no_stats: Path, rounds: int, official: str | None,
                encoder: torch.nn.Module) -> None:
    """(g) whole processes, interleaved rounds, medians; with `official`, the ceiling this CPU puts on the ratio."""
    one = tmp / "one.wav"
    sf.write(one, (0.1 * np.random.default_rng(0).standard_normal(16000)).astype(np.float32), 16000)
    runs: dict[str, list[str] | str] = {
        "python -c 'import torch' (floor)": [sys.executable, "-c", "import torch"],
        "byola --help": _byola("--help"),
        "byola embed one 1-s file": _byola("embed", str(one), "--checkpoint", str(ckpt), "--progress", "False"),
    }
    listing = _spcv2_files(data, tmp)
    if listing:
        runs["spcv2_12, statistics given"] = _byola("embed", str(listing), "--checkpoint", str(ckpt),
                                                    "--progress", "False")
        runs["spcv2_12, statistics computed"] = _byola("embed", str(listing), "--checkpoint", str(ckpt_no_stats),
                                                       "--progress", "False")
        if cpu_has_native_bf16():  # emulated bf16 took 5x the fp32 time on the 2-core AMD EPYC (Zen 1) VM
            runs["spcv2_12, statistics computed, bf16"] = runs["spcv2_12, statistics computed"] + ["--precision",
                                                                                                  "bf16"]
        if official:
            runs["official pipeline (--official)"] = official
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, cmd in runs.items():
            if isinstance(cmd, list) and "embed" in cmd:
                cmd = cmd + ["--out", str(tmp / f"cli_{len(times[name])}_{abs(hash(name))}")]
            times[name].append(_wall(cmd))
    med = {name: statistics.median(t) for name, t in times.items()}
    for name, t in med.items():
        print(f"(g) {name:40s} {t:6.2f} s (median of {rounds}: {', '.join(f'{x:.2f}' for x in times[name])})")
    if listing:
        given, computed = med["spcv2_12, statistics given"], med["spcv2_12, statistics computed"]
        bf16 = med.get("spcv2_12, statistics computed, bf16")
        print(f"(g) spcv2_12: statistics computed / given = {computed / given:.2f}x the time; "
              + (f"bf16 / fp32 = {computed / bf16:.2f}x the speed" if bf16 else
                 "bf16 not run (no native bf16 on this CPU)"))
        if official:
            theirs = med["official pipeline (--official)"]
            print(f"(g) byola (statistics computed) = {theirs / computed:.2f}x the official pipeline's speed"
                  + (f"; bf16: {theirs / bf16:.2f}x" if bf16 else ""))
            # No pipeline embeds faster than its encoder runs, nor starts faster than `import torch`.
            n_files = len(listing.read_text().splitlines())
            workers = len(os.sched_getaffinity(0))
            rate = parallel_clips_per_s(optimize_for_inference(encoder, micro_batch=16),
                                        torch.randn(512, 1, 64, 101), 256, workers)
            encoder_s, floor = n_files / rate, med["python -c 'import torch' (floor)"]
            print(f"(g) ceiling on this CPU: encoder alone ({workers} 1-thread processes, {rate:.0f} clips/s) needs "
                  f"{encoder_s:.2f} s for the {n_files} clips; official / (that + import torch) = "
                  f"{theirs / (encoder_s + floor):.2f}x, official / that alone = {theirs / encoder_s:.2f}x")


def memory_figures(data: Path, tmp: Path, ckpt_no_stats: Path, baseline_src: str | None, rounds: int) -> None:
    """(m) peak memory of whole `byola embed` processes (see the docstring), with this checkout's byola and, with
    `baseline_src`, the byola of that folder, interleaved, `rounds` times each (the peak varies from run to run:
    which thread allocates a large block decides where glibc puts it)."""
    cases: dict[str, list[str]] = {}
    esc = data / "esc50_f4" / "audio"
    if esc.is_dir():
        cases["esc50_f4 (392 x 5 s), statistics computed"] = [str(esc)]
    else:
        print(f"(m) esc50_f4: skipped, {esc} not found")
    for label, seconds in (("a one-minute file", 60), ("a one-hour file", 3600)):
        path = tmp / f"{seconds}s.wav"
        with sf.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as f:
            rng = np.random.default_rng(0)
            for _ in range(seconds // 60):
                f.write((0.1 * rng.standard_normal(960000)).astype(np.float32))
        cases[label] = [str(path), "--norm_stats", "-6.0,5.0"]  # statistics given: no statistics pass
    versions = {"this checkout": None}
    if baseline_src:
        versions = {f"baseline {baseline_src}": baseline_src, **versions}
    envs = {}
    for version, src in versions.items():
        envs[version] = dict(os.environ)
        if src:
            envs[version]["PYTHONPATH"] = os.path.abspath(src) + os.pathsep + os.environ.get("PYTHONPATH", "")
        # Run from `tmp`: `python -m` puts the working folder first on sys.path, where a checkout's byola would win.
        where = subprocess.run([sys.executable, "-c", "import byola; print(byola.__file__)"], env=envs[version],
                               cwd=tmp, capture_output=True, text=True).stdout.strip()
        print(f"(m) {version}: byola from {where}")
    for name, args in cases.items():
        peaks: dict[str, list[tuple[float, float]]] = {version: [] for version in versions}
        for r in range(rounds):
            for version in versions:
                out = tmp / f"mem_{abs(hash((name, version)))}_{r}"
                cmd = _byola("embed", *args, "--checkpoint", str(ckpt_no_stats), "--out", str(out),
                             "--progress", "False")
                peaks[version].append(peak_rss_mb(cmd, envs[version], cwd=tmp))
                if not (out / "manifest.json").exists():
                    print(f"(m) {name}, {version}: FAILED (no manifest.json in {out})")
        for version, values in peaks.items():
            largest, total = [v[0] for v in values], [v[1] for v in values]
            print(f"(m) {name:42s} {version:30s} peak of {rounds}: {max(largest):5.0f} MB RSS in its largest process "
                  f"({', '.join(f'{x:.0f}' for x in largest)}), {max(total):5.0f} MB PSS in all its processes "
                  f"together ({', '.join(f'{x:.0f}' for x in total)})")


def load_figures(data: Path, tmp: Path, ckpt_no_stats: Path, rounds: int, official: str | None) -> None:
    """(h) `byola embed` of spcv2_12 (statistics computed) and, with `official`, the official pipeline, each alone
    and while a competing CPU-bound job (`byola embed` of the same files in a loop) runs throughout; interleaved."""
    listing = _spcv2_files(data, tmp)
    if not listing:
        print("(h) skipped: spcv2_12 not found")
        return
    embed = _byola("embed", str(listing), "--checkpoint", str(ckpt_no_stats), "--progress", "False")
    runs: dict[str, list[str] | str] = {"byola embed": embed}
    if official:
        runs["official pipeline"] = official
    competitor_out = tmp / "load_competitor"  # emptied each time: embed reuses the finished files of its OUT
    loop = f"rm -rf {competitor_out}; " + " ".join(embed + ["--out", str(competitor_out)])
    times = {(name, loaded): [] for name in runs for loaded in (False, True)}
    for r in range(rounds):
        for name, cmd in runs.items():
            for loaded in (False, True):
                out = ["--out", str(tmp / f"load_{r}_{loaded}_{abs(hash(name))}")] if isinstance(cmd, list) else []
                competitor = None
                if loaded:  # a job that competes for the whole measured run, however long it is
                    competitor = subprocess.Popen(["bash", "-c", f"while :; do {loop}; done"], start_new_session=True,
                                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(3.0)  # the competitor is past its start and embedding
                times[name, loaded].append(_wall(cmd + out if out else cmd))
                if competitor:
                    os.killpg(competitor.pid, signal.SIGKILL)
                    competitor.wait()
    med = {key: statistics.median(t) for key, t in times.items()}
    for (name, loaded), t in med.items():
        print(f"(h) {name:18s} {'under load' if loaded else 'alone':10s} {t:6.2f} s "
              f"(median of {rounds}: {', '.join(f'{x:.2f}' for x in times[name, loaded])})")
    for name in runs:
        print(f"(h) {name}: under load / alone = {med[name, True] / med[name, False]:.2f}x the time "
              "(2 equal jobs sharing the cores fairly: 2x)")
    if official:
        print(f"(h) byola = {med['official pipeline', False] / med['byola embed', False]:.2f}x the official "
              f"pipeline's speed alone, {med['official pipeline', True] / med['byola embed', True]:.2f}x under load")
    print(f"(h) load average now {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(SHARED_DATA))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--memory", action="store_true", help="(m) peak memory: esc50_f4 with statistics computed, "
                        "a one-hour file")
    parser.add_argument("--baseline_src", default=None, help="(m) also with the byola package of this folder")
    parser.add_argument("--compile", action="store_true", help="end to end with `embed --compile`")
    parser.add_argument("--precision", action="store_true", help="(e) fp32 vs bf16, FLOP/s vs peak")
    parser.add_argument("--cli", action="store_true", help="(g) whole-process figures")
    parser.add_argument("--load", action="store_true", help="(h) embed under a competing job")
    parser.add_argument("--only", action="store_true", help="skip (a)-(d)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--official", default=None, help="a shell command running the official pipeline (see above)")
    parser.add_argument("--checkpoint", default=None,
                        help="for (g)/(h)/(m): weights to use (statistics are dropped for the 'computed' runs); "
                             "default: AudioNTT2020 d=512 random init")
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, CPU {cpu_model()} "
          f"({len(os.sched_getaffinity(0))} usable), native bf16: "
          f"{'yes' if cpu_has_native_bf16() else 'no (no avx512_bf16/amx_bf16: bf16 figures are emulated)'}, "
          f"load average {os.getloadavg()[0]:.1f}")

    tmp = Path(tempfile.mkdtemp(prefix="byola_bench_"))
    encoder = build_encoder("AudioNTT2020", n_mels=64, d=512).eval()
    ckpt = tmp / "ntt2020_d512.safetensors"
    if args.checkpoint:
        encoder, _ = load_checkpoint(args.checkpoint)
    save_checkpoint(ckpt, encoder, LogMelSpectrogram().config(), NormStats(mean=-6.0, std=5.0, count=1),
                    {"source": "benchmark"})
    ckpt_no_stats = tmp / "ntt2020_d512_no_stats.safetensors"
    save_checkpoint(ckpt_no_stats, encoder, LogMelSpectrogram().config(), None, {"source": "benchmark"})
    mels = torch.randn(1024, 1, 64, 101)
    if args.precision:
        precision_figures(encoder, mels, args.batch)
    if args.cli:
        cli_figures(Path(args.data), tmp, ckpt, ckpt_no_stats, args.rounds, args.official, encoder)
    if args.load:
        load_figures(Path(args.data), tmp, ckpt_no_stats, args.rounds, args.official)
    if args.memory:
        memory_figures(Path(args.data), tmp, ckpt_no_stats, args.baseline_src, args.rounds)
    if args.only:
        print(f"(work files in {tmp})")
        return

    # (a) and (b): the encoder alone on 1-second log-mels.
    workers = len(os.sched_getaffinity(0))  # embed's default number of CPU workers
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

    print(f"(work files in {tmp})")


if __name__ == "__main__":
    main()
