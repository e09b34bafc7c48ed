"""byola.embed and `byola embed`: outputs, bad inputs, resume, chunked equals whole, batch independence."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import byola
from byola import embed as embed_mod
from byola.checkpoint import CheckpointError, save_checkpoint
from byola import embed_job
from byola.embed_job import read_embeddings
from byola.frontend import DEFAULT_BACKEND, LogMelSpectrogram
from byola.models import build_encoder
from byola.norm import NormStats


def _tone(seconds: float, sr: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    encoder = build_encoder("AudioNTT2020", n_mels=64, d=64)
    # Non-trivial BN statistics so that folding them into the convolutions is exercised.
    for m in encoder.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, encoder, LogMelSpectrogram().config(), NormStats(mean=-8.0, std=4.0, count=1),
                    {"source": "test"})
    return path


@pytest.fixture()
def corpus(tmp_path: Path) -> dict[str, Path]:
    """Good files of several lengths, rates and formats, plus one of each kind of bad input."""
    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    files = {
        "a": d / "a.wav", "b": d / "sub" / "b.flac", "c": d / "c.ogg", "d": d / "d.wav", "stereo": d / "st.wav",
    }
    sf.write(files["a"], _tone(1.0, seed=1), 16000)
    sf.write(files["b"], _tone(1.0, seed=2, freq=880), 16000)
    sf.write(files["c"], _tone(2.5, sr=22050, seed=3), 22050)
    sf.write(files["d"], (_tone(0.7, sr=8000, seed=4) * 30000).astype(np.int16), 8000, subtype="PCM_16")
    sf.write(files["stereo"], np.stack([_tone(1.2, seed=5), _tone(1.2, seed=6)], 1), 44100)
    bad = {
        "empty": d / "empty.wav", "text": d / "notes.wav", "truncated": d / "trunc.flac", "zero": d / "zero.wav",
        "nan": d / "nan.wav",
    }
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is not audio\n" * 20)
    sf.write(bad["truncated"], _tone(2.0, seed=7), 16000)
    raw = bad["truncated"].read_bytes()
    bad["truncated"].write_bytes(raw[: len(raw) // 3])
    sf.write(bad["zero"], np.zeros(0, np.float32), 16000)
    nan = _tone(1.0, seed=8)
    nan[100] = np.nan
    sf.write(bad["nan"], nan, 16000, subtype="FLOAT")
    return {**{k: v for k, v in files.items()}, **{f"bad_{k}": v for k, v in bad.items()}}


def _read_index(out: Path) -> list[dict]:
    with open(out / "index.csv") as f:
        return list(csv.DictReader(f))


def test_embed_files_outputs_and_bad_inputs(ckpt, corpus, tmp_path):
    model = byola.load(ckpt)
    files = embed_mod.collect_inputs([corpus["a"].parent])
    assert len(files) == len(corpus)
    summary = model.embed_files(files, tmp_path / "out", batch_size=4, num_workers=0, progress=False)
    assert (summary.ok, summary.failed) == (5, 5)
    rows = _read_index(tmp_path / "out")
    assert list(rows[0]) == embed_mod.INDEX_COLUMNS
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    assert emb.dtype == np.float32 and emb.shape == (5, 64)
    by_file = {Path(r["file"]).name: r for r in rows}
    for key in ("empty", "text", "truncated", "zero", "nan"):
        row = by_file[corpus[f"bad_{key}"].name]
        assert row["status"] == "error" and row["row"] == ""
        assert corpus[f"bad_{key}"].name in row["error"], row["error"]
    assert "NaN" in by_file["nan.wav"]["error"] or "nan" in by_file["nan.wav"]["error"].lower()
    # Each ok row holds that file's own embedding.
    wave, sr = sf.read(corpus["c"], dtype="float32")
    expected = model.embed(wave, sr).numpy()
    row = int(by_file["c.ogg"]["row"])
    np.testing.assert_allclose(emb[row], expected, rtol=1e-5, atol=1e-5)
    assert float(by_file["c.ogg"]["duration_s"]) == pytest.approx(2.5, abs=1e-3)



def test_worker_processes_embed_like_this_process(ckpt, corpus, tmp_path):
    """The default CPU path (files decoded and embedded in 2 worker processes, long files streamed here, frame
    embeddings sent back) writes what one process writes."""
    model = byola.load(ckpt)
    files = embed_mod.collect_inputs([corpus["a"].parent])
    outs = {}
    for workers in (0, 2):
        summary = model.embed_files(files, tmp_path / f"w{workers}", batch_size=3, num_workers=workers,
                                    frames=True, max_load_sec=2.0, progress=False)
        assert (summary.ok, summary.failed) == (5, 5)
        outs[workers] = tmp_path / f"w{workers}"
    rows = {w: _read_index(out) for w, out in outs.items()}
    assert rows[0] == rows[2]
    np.testing.assert_allclose(np.load(outs[2] / "embeddings.npy"), np.load(outs[0] / "embeddings.npy"),
                               rtol=1e-5, atol=1e-6)
    streamed = next(r for r in rows[2] if r["file"].endswith("c.ogg"))  # 2.5 s > max_load_sec: streamed
    with np.load(outs[2] / streamed["frames"]) as f2, np.load(outs[0] / streamed["frames"]) as f0:
        np.testing.assert_allclose(f2["embeddings"], f0["embeddings"], rtol=1e-5, atol=1e-6)


def test_embedding_does_not_depend_on_batch(ckpt, tmp_path):
    model = byola.load(ckpt)
    waves = torch.stack([torch.from_numpy(_tone(1.0, seed=s)) for s in range(5)])
    batched = model.embed_batch(waves)
    for k in range(5):
        torch.testing.assert_close(model.embed_batch(waves[k:k + 1])[0], batched[k], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.embed(waves[k], 16000), batched[k], rtol=1e-5, atol=1e-5)


def test_optimized_encoder_matches_plain(ckpt):
    fast, plain = byola.load(ckpt), byola.load(ckpt, optimize=False)
    waves = torch.stack([torch.from_numpy(_tone(1.0, seed=s)) for s in range(3)])
    a, b = fast.embed_batch(waves), plain.embed_batch(waves)
    assert ((a - b).abs().max() / b.abs().max()).item() < 1e-4


def test_chunked_equals_whole(ckpt, monkeypatch):
    model = byola.load(ckpt, optimize=False)
    wave = torch.from_numpy(np.concatenate([_tone(7.3, seed=9), _tone(6.1, freq=300, seed=10)]))
    whole_frames = model.embed_frames_batch(wave[None])[0]
    whole_clip = model.embed_batch(wave[None])[0]
    monkeypatch.setattr(embed_mod, "CHUNK_FRAMES", 200)  # force many chunks (2 s each)
    frames, times = model.embed_frames(wave, 16000)
    assert frames.shape == whole_frames.shape
    torch.testing.assert_close(frames, whole_frames, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.embed(wave, 16000), whole_clip, rtol=1e-4, atol=1e-4)
    # Frame timestamps: evenly spaced, in ms, within the clip.
    step = np.diff(times.numpy())
    assert np.allclose(step, step[0]) and step[0] == pytest.approx(80.0)
    assert 0 <= times[0] and times[-1] <= 1000 * len(wave) / 16000


def test_long_file_streams_in_bounded_chunks(ckpt, tmp_path, monkeypatch):
    path = tmp_path / "long.flac"
    wave = np.concatenate([_tone(4.0, seed=s, freq=200 + 50 * s) for s in range(6)])
    sf.write(path, wave, 16000)
    model = byola.load(ckpt)
    expected = model.embed(wave, 16000)
    monkeypatch.setattr(embed_mod, "CHUNK_FRAMES", 300)
    calls = []
    original = model._stream_frame_embeddings

    def spy(blocks):
        for chunk in original(blocks):
            calls.append(len(chunk))
            yield chunk
    monkeypatch.setattr(model, "_stream_frame_embeddings", spy)
    summary = model.embed_files([path], tmp_path / "out", max_load_sec=5.0, num_workers=0, progress=False)
    assert summary.ok == 1 and len(calls) > 3 and max(calls) <= 2 * 300 // 8  # bounded by two chunks
    np.testing.assert_allclose(np.load(tmp_path / "out" / "embeddings.npy")[0], expected.numpy(), rtol=1e-4,
                               atol=1e-4)


def test_interrupted_run_resumes_without_loss(ckpt, tmp_path, monkeypatch):
    in_dir = tmp_path / "in"
    in_dir.mkdir()
    paths = []
    for k in range(12):
        p = in_dir / f"{k:02d}.wav"
        sf.write(p, _tone(1.0, seed=k, freq=300 + 20 * k), 16000)
        paths.append(p)
    reference = byola.load(ckpt).embed_files(paths, tmp_path / "ref", batch_size=3, num_workers=0, progress=False)
    assert reference.ok == 12

    model = byola.load(ckpt)
    calls = {"n": 0}
    original = model.embed_batch

    def crashing(waves):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(waves)
    monkeypatch.setattr(model, "embed_batch", crashing)
    with pytest.raises(KeyboardInterrupt):
        model.embed_files(paths, tmp_path / "out", batch_size=3, num_workers=0, progress=False, flush_every=3)
    assert not (tmp_path / "out" / "embeddings.npy").exists()
    monkeypatch.undo()
    resumed = byola.load(ckpt).embed_files(paths, tmp_path / "out", batch_size=3, num_workers=0, progress=False)
    assert resumed.reused == 6 and resumed.ok == 12
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "embeddings.npy"),
                                  np.load(tmp_path / "ref" / "embeddings.npy"))
    assert _read_index(tmp_path / "out") == _read_index(tmp_path / "ref")


_STOPPED_AT_THE_4TH_FILE = """
import signal, sys, time
from pathlib import Path
from byola.cli import main
from byola.embed import Embedder
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, also when the tests run in background
original, calls = Embedder.embed_batch, []
def fourth_waits(self, waves):
    calls.append(len(waves))
    if len(calls) == 4:
        Path(sys.argv[1]).touch()
        time.sleep(300)  # until the signal
    return original(self, waves)
Embedder.embed_batch = fourth_waits
main(["embed", *sys.argv[2:], "--batch_size", "1", "--num_workers", "0", "--progress", "false"])
"""


@pytest.mark.parametrize("stop, status", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)])
def test_ctrl_c_or_sigterm_saves_the_finished_files(ckpt, tmp_path, stop, status):
    """`byola embed` stopped by Ctrl-C or SIGTERM while embedding its 4th file (of 7, far fewer than flush_every)
    saves the 3 finished ones before it exits: the rerun reuses them."""
    paths = []
    for k in range(7):
        paths.append(tmp_path / "in" / f"{k:02d}.wav")
        paths[-1].parent.mkdir(exist_ok=True)
        sf.write(paths[-1], _tone(0.6 + 0.1 * k, seed=k), 16000)
    out, waiting = tmp_path / "out", tmp_path / "waiting"
    job = subprocess.Popen([sys.executable, "-c", _STOPPED_AT_THE_4TH_FILE, str(waiting), str(tmp_path / "in"),
                            "--checkpoint", str(ckpt), "--out", str(out)],
                           env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not waiting.exists():
            assert job.poll() is None and time.time() < deadline, job.stderr.read()
            time.sleep(0.05)
        job.send_signal(stop)
        assert job.wait(timeout=60) == status, job.stderr.read()
    finally:
        job.kill()
        job.wait()
    said = job.stderr.read()
    assert "Traceback" not in said
    assert f"byola embed: {'interrupted' if stop == signal.SIGINT else 'terminated'}" in said, said
    assert not (out / "manifest.json").exists()
    resumed = byola.load(ckpt).embed_files(paths, out, batch_size=1, num_workers=0, progress=False)
    assert (resumed.ok, resumed.reused) == (7, 3)


def test_finished_files_are_saved_at_least_every_flush_seconds(ckpt, tmp_path, monkeypatch):
    """Slow files are saved on a time basis too, not only every flush_every files (what a kill -9 can lose)."""
    paths = []
    for k in range(3):
        paths.append(tmp_path / f"{k:02d}.wav")
        sf.write(paths[-1], _tone(0.6 + 0.1 * k, seed=k), 16000)
    saved = []
    write = embed_job._State.write
    monkeypatch.setattr(embed_job._State, "write", lambda self, records, *a: saved.append(len(records)) or
                        write(self, records, *a))
    monkeypatch.setattr(embed_job, "FLUSH_SECONDS", 0.0)
    byola.load(ckpt).embed_files(paths, tmp_path / "out", batch_size=1, num_workers=0, progress=False)
    assert saved == [1, 1, 1]
    monkeypatch.setattr(embed_job, "FLUSH_SECONDS", 3600.0)
    saved.clear()
    byola.load(ckpt).embed_files(paths, tmp_path / "out2", batch_size=1, num_workers=0, progress=False)
    assert saved == [3]


def test_out_dir_from_other_settings_is_refused(ckpt, tone_wav, tmp_path):
    byola.load(ckpt).embed_files([tone_wav], tmp_path / "out", num_workers=0, progress=False)
    with pytest.raises(ValueError, match="other settings"):
        byola.load(ckpt).embed_files([tone_wav], tmp_path / "out", frames=True, num_workers=0, progress=False)


def test_frames_output(ckpt, tone_wav, tmp_path):
    byola.load(ckpt).embed_files([tone_wav], tmp_path / "out", frames=True, num_workers=0, progress=False)
    row = _read_index(tmp_path / "out")[0]
    assert row["frames"] == f"frames{tone_wav}.npz"  # findable without index.csv: mirrors the input's path
    with np.load(tmp_path / "out" / row["frames"]) as data:
        assert data["embeddings"].shape == (101 // 8, 64) and data["embeddings"].dtype == np.float32
        assert data["timestamps_ms"].shape == (101 // 8,)


def test_collect_inputs_list_file_and_missing(tmp_path, tone_wav):
    listing = tmp_path / "files.txt"
    listing.write_text(f"# comment\n{tone_wav.name}\n\n{tone_wav}\n")
    assert embed_mod.collect_inputs([listing, tone_wav]) == [str(tone_wav)]
    with pytest.raises(FileNotFoundError, match="nope.wav"):
        embed_mod.collect_inputs([tmp_path / "nope.wav"])


def test_cli_embed_exit_codes(ckpt, corpus, tmp_path):
    cmd = [sys.executable, "-m", "byola", "embed", str(corpus["a"]), str(corpus["b"]), "--checkpoint", str(ckpt),
           "--out", str(tmp_path / "good"), "--num_workers", "0", "--progress", "False"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.load(tmp_path / "good" / "embeddings.npy").shape == (2, 64)
    # Without --frontend_backend: byola's default log-mel, not the checkpoint's (nnaudio here).
    assert read_embeddings(tmp_path / "good").settings["frontend"]["backend"] == DEFAULT_BACKEND != "nnaudio"
    cmd[4:5] = [str(corpus["bad_text"])]
    cmd[cmd.index(str(tmp_path / "good"))] = str(tmp_path / "bad")
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 1
    assert "1 ok (1 embedded now, 0 reused from an earlier run), 1 failed" in done.stderr
    assert f"failed: {corpus['bad_text']}: " in done.stderr and "index.csv" in done.stderr


def test_checkpoint_without_stats_uses_inputs(ckpt, tmp_path, corpus):
    from byola.checkpoint import load_checkpoint

    encoder, meta = load_checkpoint(ckpt)
    bare = tmp_path / "bare.safetensors"
    save_checkpoint(bare, encoder, meta["frontend"], None, {"source": "test"})
    model = byola.load(bare)
    with pytest.raises(RuntimeError, match="normalization statistics"):
        model.embed_batch(torch.zeros(1, 16000))
    stats = model.fit_norm_stats([corpus["a"], corpus["b"], corpus["bad_text"]])
    assert np.isfinite(stats.mean) and stats.std > 0
    assert model.embed_batch(torch.zeros(1, 16000)).shape == (1, 64)


def test_frontend_backends_give_the_same_embeddings(ckpt):
    waves = torch.stack([torch.from_numpy(_tone(1.0, seed=s, freq=200 + 100 * s)) for s in range(3)])
    default = byola.load(ckpt).embed_batch(waves)
    trained_with = byola.load(ckpt, frontend_backend=None)
    assert trained_with.frontend.backend == "nnaudio"
    other = trained_with.embed_batch(waves)
    assert ((default - other).abs().max() / other.abs().max()).item() < 1e-3


def test_image_checkpoint_is_refused_clearly(tmp_path):
    from byola.checkpoint import save_checkpoint as save

    path = tmp_path / "img.safetensors"
    save(path, build_encoder("small_cnn"), {"size": [16, 16], "mean": [0.5], "std": [0.5]}, None, {"source": "test"},
         modality="image")
    with pytest.raises(CheckpointError, match="image model"):
        byola.load(path)
    _one_line_error(["embed", str(path), "--checkpoint", str(path), "--out", str(tmp_path / "out")], "image model")
    assert not (tmp_path / "out").exists()


def _one_line_error(argv: list[str], message: str) -> None:
    """`byola ARGV` ends in one error line naming `message` and exit status 2, no traceback (progress before it
    is fine)."""
    import contextlib
    import io

    from byola.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(argv)
    text = err.getvalue()
    last = text.strip().splitlines()[-1]
    assert exit_.value.code == 2 and "Traceback" not in text, text
    assert last.startswith(f"byola {argv[0]}: error: ") and message in last, text


def test_no_readable_input_for_the_statistics_pass_is_a_one_line_error(tmp_path, monkeypatch):
    """A checkpoint without statistics and nothing decodable to compute them from: one line, exit status 2."""
    monkeypatch.delenv("BYOLA_DEBUG", raising=False)
    path = tmp_path / "nostats.safetensors"
    save_checkpoint(path, build_encoder("AudioNTT2020", n_mels=64, d=32), LogMelSpectrogram().config(), None,
                    {"source": "test"})
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.wav").write_text("not audio at all " * 20)
    (tmp_path / "in" / "empty.wav").write_bytes(b"")
    message = "no audio to compute normalization statistics from"
    with pytest.warns(UserWarning, match="skipped 2"):
        _one_line_error(["embed", str(tmp_path / "in"), "--checkpoint", str(path), "--out", str(tmp_path / "out"),
                         "--num_workers", "0"], message)
        _one_line_error(["stats", str(tmp_path / "in"), "--checkpoint", str(path)], message)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where, error", [
    ("decode", TypeError("a programming error")),
    ("batch", torch.OutOfMemoryError("CUDA out of memory")),
    ("stream", AssertionError("a broken invariant")),
])
def test_only_input_failures_become_error_rows(ckpt, tmp_path, monkeypatch, where, error):
    """A failure about one input (undecodable, too short for the model) is its status=error row; out of memory or a
    programming error stops the job before its commit (no manifest), and the same job then completes."""
    files = [tmp_path / f"{k}.wav" for k in range(3)]
    for k, path in enumerate(files):
        sf.write(path, _tone(1.0 + 0.1 * k, seed=k), 16000)
    short = tmp_path / "short.wav"
    sf.write(short, _tone(0.02), 16000)  # 320 samples: too short for the log-mel's reflect padding
    model, out = byola.load(ckpt), tmp_path / "out"
    job = {"num_workers": 0, "progress": False, "max_load_sec": 0.5 if where == "stream" else 60.0}

    def fail(*args, **kwargs):
        raise error

    owner, name = {"decode": (embed_job, "load_audio_if_shorter"), "batch": (embed_mod.Embedder, "embed_batch"),
                   "stream": (embed_mod.Embedder, "_stream_frame_embeddings")}[where]
    monkeypatch.setattr(owner, name, fail)
    with pytest.raises(type(error), match=str(error)):
        model.embed_files([short, *files], out, **job)
    assert not (out / "manifest.json").exists()
    monkeypatch.undo()
    summary = model.embed_files([short, *files], out, **job)
    assert (summary.ok, summary.failed) == (3, 1) and "too short" in summary.failures[0][1]
    assert [r["status"] for r in read_embeddings(out).index] == ["error", "ok", "ok", "ok"]


def test_frames_at_a_coarser_hop_are_mean_pooled(ckpt, tmp_path):
    """Issue 11: `--frames --frame_hop_ms N` writes frames N ms apart, each the mean of N / frame_hop_ms model
    frames (a last shorter group averages the rest), with their centre timestamps; clip embeddings do not change."""
    wave = tmp_path / "tone.wav"
    sf.write(wave, _tone(3.3), 16000)  # 331 log-mel frames -> 41 model frames 80 ms apart
    model = byola.load(ckpt)
    assert model.frame_hop_ms == 80.0
    model.embed_files([wave], tmp_path / "native", frames=True, num_workers=0, progress=False)
    model.embed_files([wave], tmp_path / "pooled", frames=True, frame_hop_ms=240, num_workers=0, progress=False)
    (native,), (pooled,) = _read_index(tmp_path / "native"), _read_index(tmp_path / "pooled")
    with np.load(tmp_path / "native" / native["frames"]) as a, np.load(tmp_path / "pooled" / pooled["frames"]) as b:
        frames, times = a["embeddings"], a["timestamps_ms"].astype(np.float64)
        assert frames.shape[0] == 41 and b["embeddings"].shape == (14, 64)
        expected = np.stack([frames[k:k + 3].mean(axis=0) for k in range(0, 41, 3)])  # 13 groups of 3, then 2
        np.testing.assert_allclose(b["embeddings"], expected, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(b["timestamps_ms"], [times[k:k + 3].mean() for k in range(0, 41, 3)], rtol=1e-7)
        assert np.diff(b["timestamps_ms"])[:-1] == pytest.approx(240.0)
    np.testing.assert_array_equal(np.load(tmp_path / "native" / "embeddings.npy"),
                                  np.load(tmp_path / "pooled" / "embeddings.npy"))
    # The Python API pools the same way.
    api_frames, api_times = model.embed_frames(_tone(3.3), 16000, hop_ms=240)
    np.testing.assert_allclose(api_frames.numpy(), expected, rtol=1e-4, atol=1e-4)
    # The hop is a setting of the output folder: a rerun with another hop is refused like any other change.
    with pytest.raises(ValueError, match="other settings.*frame_hop_ms"):
        model.embed_files([wave], tmp_path / "pooled", frames=True, frame_hop_ms=160, num_workers=0,
                          progress=False)
    # The model's own hop is the default: same settings, nothing to redo.
    again = model.embed_files([wave], tmp_path / "native", frames=True, frame_hop_ms=80, num_workers=0,
                              progress=False)
    assert again.reused == 1


@pytest.mark.parametrize(("options", "message"), [
    (["--frames", "--frame_hop_ms", "100"],
     "--frame_hop_ms: frame hop 100 ms is not a multiple of this model's frame hop 80 ms: use 80, 160, 240, ... ms"),
    (["--frames", "--frame_hop_ms", "0"], "--frame_hop_ms: frame hop 0 ms is not a multiple of this model's frame "
                                          "hop 80 ms: use 80, 160, 240, ... ms"),
    (["--frame_hop_ms", "160"], "--frame_hop_ms 160 is the hop of the frame embeddings: add --frames"),
])
def test_cli_bad_frame_hop_is_one_line_before_any_work(ckpt, tone_wav, tmp_path, options, message):
    done = subprocess.run([sys.executable, "-m", "byola", "embed", str(tone_wav), "--checkpoint", str(ckpt),
                           "--out", str(tmp_path / "out"), *options], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [f"byola embed: error: {message}"]
    assert not (tmp_path / "out").exists()


def test_cli_progress_false_hides_the_statistics_bar_too(ckpt, tone_wav, tmp_path):
    from byola.checkpoint import load_checkpoint

    encoder, meta = load_checkpoint(ckpt)
    bare = tmp_path / "bare.safetensors"
    save_checkpoint(bare, encoder, meta["frontend"], None, {"source": "test"})
    done = subprocess.run([sys.executable, "-m", "byola", "embed", str(tone_wav), "--checkpoint", str(bare),
                           "--out", str(tmp_path / "out"), "--progress", "False"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "computing them from the 1 inputs" in done.stderr and "norm stats" not in done.stderr
