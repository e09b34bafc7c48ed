"""Hostile cases for byola's outputs, end to end with the real CLI (run by hand; prints one line per case).

    python benchmarks/fault_matrix.py [--keep DIR]

Each case runs `python -m byola ...` on generated audio and a tiny generated model in a temporary folder and prints
``case | expected | observed | PASS/FAIL``, then the totals. Exits 1 if any case fails.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from byola.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from byola.embed import IncompleteOutput, read_embeddings
from byola.frontend import LogMelSpectrogram
from byola.models import build_encoder
from byola.norm import NormStats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.test_checkpoint builds official-layout weights
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def tone(seconds: float, freq: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.4 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(t.shape)).astype(np.float32)


def clips(folder: Path, n: int, start: int = 0, seconds: float = 0.6) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k in range(start, start + n):
        path = folder / f"{k:03d}.wav"
        sf.write(path, tone(seconds + 0.1 * (k % 3), 150 + 37 * k, k), 16000)
        out.append(path)
    return out


def byola(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "byola", *map(str, args)], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "byola", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def index(out: Path) -> list[dict]:
    with open(out / "index.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def one_line_error(done: subprocess.CompletedProcess) -> bool:
    return done.returncode != 0 and "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


class Matrix:
    def __init__(self, work: Path) -> None:
        self.work, self.rows = work, []
        torch.manual_seed(0)
        self.ckpt = work / "tiny.safetensors"
        save_checkpoint(self.ckpt, build_encoder("AudioNTT2020", n_mels=64, d=32), LogMelSpectrogram().config(),
                        NormStats(-8.0, 4.0, 1), {"source": "fault_matrix"})
        encoder, meta = load_checkpoint(self.ckpt)
        self.bare = work / "bare.safetensors"
        save_checkpoint(self.bare, encoder, meta["frontend"], None, {"source": "fault_matrix"})
        with torch.no_grad():
            encoder.fc[0].weight[0, 0] = float("nan")
        self.broken = work / "nan.safetensors"
        save_checkpoint(self.broken, encoder, meta["frontend"], meta["norm_stats"], {"source": "fault_matrix"})
        self.inputs = work / "in"
        clips(self.inputs, 40)
        self.reference = work / "reference"
        done = self.embed(self.inputs, self.reference)
        assert done.returncode == 0, done.stderr

    def embed(self, *args, **kw) -> subprocess.CompletedProcess:
        *inputs, out = args
        return byola("embed", *inputs, "--checkpoint", kw.pop("ckpt", self.ckpt), "--out", out, "--num_workers",
                     kw.pop("workers", 0), "--progress", "False", *kw.pop("extra", ()))

    def case(self, name: str, expected: str, check) -> None:
        t0 = time.perf_counter()
        try:
            ok, observed = check(self.work / name.replace(" ", "_").replace("/", "_"))
        except Exception as err:  # noqa: BLE001 -- a crashing check is a failed case, with its reason
            ok, observed = False, f"check raised {type(err).__name__}: {err}"
            traceback.print_exc(file=sys.stderr)
        self.rows.append((name, expected, observed, ok))
        print(f"{name} | {expected} | {observed} | {'PASS' if ok else 'FAIL'} ({time.perf_counter() - t0:.0f} s)",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="byola_faults_"))
    work.mkdir(parents=True, exist_ok=True)
    m = Matrix(work)
    ref = read_embeddings(m.reference)

    def bad_files(d: Path):
        d.mkdir()
        (d / "empty.wav").write_bytes(b"")
        (d / "text.wav").write_text("not audio\n" * 50)
        sf.write(d / "trunc.flac", tone(2.0, 300, 1), 16000)
        (d / "trunc.flac").write_bytes((d / "trunc.flac").read_bytes()[:3000])
        sf.write(d / "zero.wav", np.zeros(0, np.float32), 16000)
        nan = tone(1.0, 300, 2)
        nan[5] = np.nan
        sf.write(d / "nan.wav", nan, 16000, subtype="FLOAT")
        clips(d, 1)
        done = m.embed(d, d / "out")
        rows = index(d / "out")
        errors = [r for r in rows if r["status"] == "error" and r["error"]]
        return (done.returncode == 1 and len(errors) == 5 and len(rows) == 6,
                f"exit {done.returncode}, {len(errors)} error rows of {len(rows)}")
    m.case("bad audio files", "exit 1, 5 error rows with reasons, 1 ok", bad_files)

    def odd_entries(d: Path):
        d.mkdir()
        clips(d, 1)
        os.symlink(d / "gone.wav", d / "broken.wav")
        sf.write(d / "x.wav", tone(0.6, 500, 3), 16000)
        os.rename(d / "x.wav", os.path.join(os.fsencode(d), b"caf\xe9.wav"))
        os.mkfifo(d / "pipe.wav")
        (d / "folder.wav").mkdir()
        listing = d / "list.txt"
        listing.write_text("missing.wav\n")
        done = m.embed(d, listing, d / "out")
        rows = {Path(r["file"]).name: r["status"] + ":" + r["error"] for r in index(d / "out")}
        want = {"000.wav": "ok", "caf\\xe9.wav": "ok", "broken.wav": "broken link", "pipe.wav": "regular file",
                "folder.wav": "folder", "missing.wav": "no such file"}
        ok = done.returncode == 1 and "Traceback" not in done.stderr and set(rows) == set(want) and all(
            want[k] in v for k, v in rows.items())
        return ok, f"exit {done.returncode}, rows {sorted(rows)}" + (" TRACEBACK" if "Traceback" in done.stderr else "")
    m.case("odd entries (broken link, non-UTF-8 name, FIFO, folder.wav, missing listed)",
           "every entry a row, no traceback, exit 1", odd_entries)

    def kill_and_resume(d: Path):
        seen = set()
        for delay in (1.5, 3.0, 4.5, 6.0, 7.5):
            proc = start("embed", m.inputs, "--checkpoint", m.ckpt, "--out", d, "--num_workers", "2",
                         "--progress", "False")
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            try:
                got = read_embeddings(d)
                seen.add("complete" if np.array_equal(got.embeddings, ref.embeddings) else "WRONG")
            except IncompleteOutput:
                seen.add("incomplete")
        done = m.embed(m.inputs, d, workers=2)
        final = read_embeddings(d)
        ok = done.returncode == 0 and "WRONG" not in seen and np.array_equal(final.embeddings, ref.embeddings) \
            and final.index == ref.index
        return ok, f"after kills: {sorted(seen)}; resumed output byte-equal to uninterrupted: " \
                   f"{np.array_equal(final.embeddings, ref.embeddings)}"
    m.case("kill -9 at 5 moments, then resume", "never a wrong complete folder; resume equals reference",
           kill_and_resume)

    def concurrent(d: Path):
        many = clips(d / "in", 200, seconds=2.0)  # long enough that the two runs overlap
        runs = [start("embed", d / "in", "--checkpoint", m.ckpt, "--out", d / "out", "--num_workers", "0",
                      "--progress", "False") for _ in range(2)]
        for run in runs:
            run.wait()
        errs = [run.stderr.read() for run in runs]
        codes = [run.returncode for run in runs]
        refused = [e for c, e in zip(codes, errs) if c != 0]
        # A busy folder is a usage error (exit 2, one line).
        ok = sorted(codes) == [0, 2] and "another byola embed" in refused[0] and "Traceback" not in refused[0] \
            and len(read_embeddings(d / "out").embeddings) == len(many)
        return ok, f"exit codes {codes}; refused one says: {refused[0].strip()[:70] if refused else '-'}"
    m.case("two writers started together", "one refused with a message, the other completes", concurrent)

    def dead_holder(d: Path):
        a = start("embed", m.inputs, "--checkpoint", m.ckpt, "--out", d, "--num_workers", "0", "--progress", "False")
        time.sleep(2.0)
        a.send_signal(signal.SIGKILL)
        a.wait()
        b = m.embed(m.inputs, d)
        return b.returncode == 0, f"next run exit {b.returncode}"
    m.case("lock holder killed", "next run proceeds", dead_holder)

    def placed_links(d: Path):
        (d / ".byola_embed").mkdir(parents=True)
        victims = []
        for name in ("embeddings.tmp.npy", "index.tmp.csv", ".byola_embed/settings.json.tmp",
                     ".byola_embed/shard_0000000.tmp.npz"):
            victim = m.work / f"victim{len(victims)}"
            victim.write_text("precious")
            os.symlink(victim, d / name)
            victims.append(victim)
        done = m.embed(m.inputs, d)
        intact = sum(v.read_text() == "precious" for v in victims)
        return done.returncode == 0 and intact == len(victims), f"exit {done.returncode}, {intact}/4 victims intact"
    m.case("links placed at temp names", "nothing written through them", placed_links)

    for label, extra, setting in (("frontend backend", ("--frontend_backend", "nnaudio"), "frontend.backend"),
                                  ("--frames toggled", ("--frames",), "frames"),
                                  ("--norm_stats changed", ("--norm_stats", "-7,3"), "norm_stats")):
        def changed(d: Path, extra=extra, setting=setting):
            shutil.copytree(m.reference, d)
            done = m.embed(m.inputs, d, extra=extra)
            return (one_line_error(done) and setting in done.stderr and read_embeddings(d).generation == 1,
                    f"exit {done.returncode}: {done.stderr.strip()[:90]}")
        m.case(f"resume with {label}", f"refused naming {setting}, output untouched", changed)

    def other_checkpoint(d: Path):
        shutil.copytree(m.reference, d)
        done = m.embed(m.inputs, d, ckpt=m.bare, extra=("--norm_stats", "-8,4"))
        return one_line_error(done) and "checkpoint_id" in done.stderr, f"exit {done.returncode}: " \
                                                                        f"{done.stderr.strip()[:90]}"
    m.case("resume with another checkpoint (same stats)", "refused naming checkpoint_id", other_checkpoint)

    def nan_model(d: Path):
        done = m.embed(m.inputs, d, ckpt=m.broken)
        rows = index(d)
        bad = sum(r["status"] == "error" and "not finite" in r["error"] for r in rows)
        return done.returncode == 1 and bad == len(rows), f"exit {done.returncode}, {bad}/{len(rows)} 'not finite'"
    m.case("checkpoint with NaN weights", "every row an error naming non-finite output, exit 1", nan_model)

    def bare_stats(d: Path):
        first = m.embed(*sorted(m.inputs.glob("*.wav"))[:10], d, ckpt=m.bare)
        before = np.load(d / "embeddings.npy")
        loud = m.work / "loud.wav"
        sf.write(loud, np.sign(tone(1.0, 90, 9)) * 0.99, 16000)
        second = m.embed(*sorted(m.inputs.glob("*.wav"))[:10], loud, d, ckpt=m.bare)
        after = read_embeddings(d).embeddings
        ok = first.returncode == 0 and second.returncode == 0 and "recorded in" in second.stderr \
            and np.array_equal(after[:10], before)
        return ok, f"exits {first.returncode}/{second.returncode}, old rows unchanged: " \
                   f"{np.array_equal(after[:10], before)}"
    m.case("no stats in checkpoint, files added on rerun", "stats recorded in OUTDIR and reused", bare_stats)

    for opt in (("--batch_size", "0"), ("--batch_size", "-4"), ("--num_workers", "-1")):
        def bad_option(d: Path, opt=opt):
            name, value = opt
            done = m.embed(m.inputs, d, extra=opt if name != "--num_workers" else (), workers=value)
            return one_line_error(done) and name in done.stderr, \
                f"exit {done.returncode}: {done.stderr.strip()[:80]}"
        m.case(f"embed {' '.join(opt)}", "one clear line", bad_option)

    def missing_input(d: Path):
        done = m.embed(m.work / "nope.wav", d)
        return one_line_error(done), f"exit {done.returncode}: {done.stderr.strip()[:80]}"
    m.case("missing input", "one clear line", missing_input)

    def reruns(d: Path):
        (d / "in").mkdir(parents=True)
        clips(d / "in", 3)
        (d / "in" / "bad.wav").write_text("x")
        sizes = []
        for _ in range(3):
            m.embed(d / "in", d / "out")
            sizes.append(len(list((d / "out" / ".byola_embed").glob("shard_*.npz"))))
        return sizes == [1, 1, 1], f"shards after each run: {sizes}"
    m.case("three reruns with a failing file", "resume state does not grow", reruns)

    def link_names(d: Path):
        d.mkdir()
        os.symlink(m.inputs / "000.wav", d / "alias.wav")
        m.embed(d / "alias.wav", d / "out")
        return index(d / "out")[0]["file"] == str(d / "alias.wav"), f"index file = {index(d / 'out')[0]['file']}"
    m.case("input given as a link", "index.csv keeps the name given", link_names)

    def tampered(d: Path):
        shutil.copytree(m.reference, d)
        arr = np.load(d / "embeddings.npy")
        arr[0, 0] += 1
        np.save(d / "embeddings.npy", arr)
        try:
            read_embeddings(d)
            return False, "read_embeddings accepted it"
        except IncompleteOutput as err:
            return True, f"refused: {str(err)[:70]}"
    m.case("embeddings.npy modified after the run", "read_embeddings refuses", tampered)

    from tests.test_checkpoint import official_state  # official-layout state dict written key by key

    def convert_cases(d: Path):
        d.mkdir()
        src = d / "v1.pth"
        torch.save(official_state(1, 512), src)
        original = src.read_bytes()
        same = byola("convert", src, src, "--overwrite")
        os.symlink(src, d / "alias.pth")
        alias = byola("convert", src, d / "alias.pth", "--overwrite")
        other = d / "other.safetensors"
        other.write_bytes(b"keep")
        existing = byola("convert", src, other)
        forced = byola("convert", src, other, "--overwrite")
        mode = other.stat().st_mode & 0o777
        ok = (one_line_error(same) and one_line_error(alias) and src.read_bytes() == original
              and one_line_error(existing) and forced.returncode == 0 and mode == 0o666 & ~current_umask())
        return ok, f"DST=SRC exit {same.returncode}, alias exit {alias.returncode}, existing exit " \
                   f"{existing.returncode}, --overwrite exit {forced.returncode}, mode {oct(mode)}"
    m.case("convert onto SRC / alias / existing file", "refused (one line), source intact; --overwrite writes "
           "with the umask's mode", convert_cases)

    def convert_stats(d: Path):
        d.mkdir()
        torch.save(official_state(1, 512), d / "v1.pth")
        done = byola("convert", d / "v1.pth", d / "v1.safetensors", "--norm_stats_from", m.inputs)
        stats = read_metadata(d / "v1.safetensors")["norm_stats"]
        printed = byola("stats", m.inputs, "--checkpoint", d / "v1.safetensors").stdout.strip().split(",")
        ok = done.returncode == 0 and np.allclose([stats["mean"], stats["std"]], list(map(float, printed)),
                                                  rtol=1e-6)
        return ok, f"stored {stats}, byola stats {printed}"
    m.case("convert --norm_stats_from FOLDER", "stored statistics = byola stats FOLDER", convert_stats)

    def eval_cache(d: Path):
        d.mkdir()
        rows = []
        for label, freq in (("low", 300), ("high", 2500)):
            for i in range(12):
                name = f"{label}_{i}.wav"
                sf.write(d / name, tone(0.5, freq * (1 + 0.01 * i), i), 16000)
                rows.append((name, label, (["train"] * 4 + ["valid", "test"])[i % 6]))
        with open(d / "task.csv", "w", newline="") as f:
            csv.writer(f).writerows([("file_name", "label", "split"), *rows])
        cmd = ("evaluate", d / "task.csv", "--checkpoint", m.ckpt, "--out", d / "eval", "--seeds", "1",
               "--progress", "False", "--unit_sec", "0.5")
        first = byola(*cmd)
        (cached,) = (d / "eval" / "cache").rglob("*.npy")
        cached.write_bytes(cached.read_bytes()[:300])
        second = byola(*cmd)
        ok = first.returncode == 0 and second.returncode == 0 and "not used" in second.stderr
        return ok, f"exits {first.returncode}/{second.returncode}, warned: {'not used' in second.stderr}"
    m.case("evaluate with a truncated cache file", "reported and recomputed", eval_cache)

    passed = sum(ok for *_, ok in m.rows)
    print(f"TOTAL {len(m.rows)} cases: {passed} PASS, {len(m.rows) - passed} FAIL")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if passed == len(m.rows) else 1)


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


if __name__ == "__main__":
    main()
