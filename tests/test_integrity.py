"""Outputs that cannot lie (issue 10): embed's OUTDIR commit, one writer, no writes through placed paths, settings
fingerprint, non-finite embeddings, every input accounted for, explicit normalization statistics, option checks,
convert's refusals and file modes, and the evaluation cache's checks. Generated audio, tiny models."""
from __future__ import annotations

import csv
import json
import os
import shutil
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
from byola.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from byola.files import list_inputs
from tests.conftest import make_tone

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt) -> Path:
    return tiny_ckpt


@pytest.fixture(scope="module")
def bare_ckpt(ckpt, tmp_path_factory) -> Path:
    """The same model without normalization statistics (like converted official weights)."""
    encoder, meta = load_checkpoint(ckpt)
    path = tmp_path_factory.mktemp("bare") / "bare.safetensors"
    save_checkpoint(path, encoder, meta["frontend"], None, {"source": "test"})
    return path


def _clips(folder: Path, n: int, start: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(start, start + n):
        path = folder / f"{k:02d}.wav"
        sf.write(path, make_tone(0.5 + 0.1 * (k % 3), freq=200 + 70 * k, seed=k), 16000)
        paths.append(path)
    return paths


def _index(out: Path) -> list[dict]:
    with open(out / "index.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "byola", *args], capture_output=True, text=True, env=env, cwd=cwd)


# -- 1. embeddings.npy and index.csv are one commit ----------------------------------------------------------------
def test_commit_holds_at_every_write_boundary(ckpt, tmp_path, monkeypatch):
    """A failure injected before each file-system write step (fsync, rename, unlink) of a rerun with other inputs
    leaves a folder that reads as the old output, the new one, or incomplete (refused): never a mixed pair."""
    paths = _clips(tmp_path / "in", 4)
    model = byola.load(ckpt)
    run = dict(num_workers=0, progress=False, batch_size=2)
    model.embed_files(paths[:2], tmp_path / "before", **run)
    model.embed_files(paths, tmp_path / "after", **run)
    expected = {name: (np.load(tmp_path / name / "embeddings.npy"), _index(tmp_path / name))
                for name in ("before", "after")}

    calls = {"n": 0, "fail_at": None}
    real = {name: getattr(os, name) for name in ("replace", "fsync", "unlink")}

    def hooked(name):
        def op(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == calls["fail_at"]:
                raise OSError(f"injected failure before os.{name}")
            return real[name](*args, **kwargs)
        return op

    for name in real:
        monkeypatch.setattr(os, name, hooked(name))
    shutil.copytree(tmp_path / "before", tmp_path / "count")
    calls["n"] = 0
    model.embed_files(paths, tmp_path / "count", **run)
    boundaries = calls["n"]
    assert boundaries >= 2
    for k in range(1, boundaries + 1):
        out = tmp_path / f"fault{k}"
        shutil.copytree(tmp_path / "before", out)
        calls["n"], calls["fail_at"] = 0, k
        with pytest.raises(OSError, match="injected"):
            model.embed_files(paths, out, **run)
        calls["fail_at"] = None
        raw = (np.load(out / "embeddings.npy"), _index(out))
        if not any(np.array_equal(raw[0], e[0]) and raw[1] == e[1] for e in expected.values()):
            # A mixed pair on disk must be refused by the reader (its manifest does not vouch for it).
            with pytest.raises(embed_mod.IncompleteOutput):
                embed_mod.read_embeddings(out)
        else:
            try:
                result = embed_mod.read_embeddings(out)
            except embed_mod.IncompleteOutput:
                result = None
            if result is not None:  # what the reader accepts is exactly the old or the new output
                rows = [{**r, "row": "" if r["row"] is None else str(r["row"])} for r in result.index]
                assert any(np.array_equal(result.embeddings, e[0]) and rows == e[1] for e in expected.values())
        model.embed_files(paths, out, **run)  # rerunning the job completes it
        done = embed_mod.read_embeddings(out)
        np.testing.assert_array_equal(done.embeddings, expected["after"][0])
        assert _index(out) == expected["after"][1]


# -- 2. one writer at a time -----------------------------------------------------------------------------------------
_SLOW_WRITER = """
import sys, time
from pathlib import Path
import byola
from byola.embed import Embedder
original = Embedder.embed_batch
def slow(self, waves):
    Path(sys.argv[3]).touch()
    time.sleep(2.0)
    return original(self, waves)
Embedder.embed_batch = slow
model = byola.load(sys.argv[1])
files = sorted(str(p) for p in Path(sys.argv[2]).glob("*.wav"))
model.embed_files(files, sys.argv[4], batch_size=1, num_workers=0, progress=False)
"""


def test_second_writer_is_refused_until_the_first_dies(ckpt, tmp_path):
    _clips(tmp_path / "in", 30)
    out, started = tmp_path / "out", tmp_path / "started"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(ckpt), str(tmp_path / "in"), str(started),
                              str(out)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not started.exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.1)
        assert first.poll() is None
        second = _cli("embed", str(tmp_path / "in" / "00.wav"), "--checkpoint", str(ckpt), "--out", str(out),
                      "--num_workers", "0", "--progress", "False")
        assert second.returncode != 0 and "another byola embed" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the first run must still be running, undisturbed"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    # The killed holder does not block the next run.
    third = _cli("embed", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out", str(out), "--num_workers", "0",
                 "--progress", "False")
    assert third.returncode == 0, third.stderr
    assert len(_index(out)) == 30


# -- 3. never write through a path someone else placed --------------------------------------------------------------
def test_placed_links_are_never_written_through(ckpt, tmp_path):
    paths = _clips(tmp_path / "in", 3)
    out = tmp_path / "out"
    (out / ".byola_embed").mkdir(parents=True)
    victims = {}
    for name in ("embeddings.tmp.npy", "index.tmp.csv", "manifest.json.tmp", ".byola_embed/settings.json.tmp",
                 ".byola_embed/shard_0000000.tmp.npz", ".byola_embed/shard_0000000.npz.tmp"):
        victim = tmp_path / f"victim_{len(victims)}"
        victim.write_text("precious")
        os.symlink(victim, out / name)
        victims[name] = victim
    try:
        summary = byola.load(ckpt).embed_files(paths, out, num_workers=0, progress=False)
    finally:
        for name, victim in victims.items():
            assert victim.read_text() == "precious", name
    assert summary.ok == 3


# -- 4. a setting change never mixes rows ----------------------------------------------------------------------------
def test_resume_with_another_setting_is_refused_naming_it(ckpt, tmp_path, monkeypatch):
    paths = _clips(tmp_path / "in", 3)
    out = tmp_path / "out"
    byola.load(ckpt).embed_files(paths[:2], out, num_workers=0, progress=False)
    with pytest.raises(ValueError, match="frontend.backend"):
        byola.load(ckpt, frontend_backend="nnaudio").embed_files(paths, out, num_workers=0, progress=False)
    monkeypatch.setattr(embed_mod, "CHUNK_FRAMES", 400)
    with pytest.raises(ValueError, match="chunk_frames"):
        byola.load(ckpt).embed_files(paths, out, num_workers=0, progress=False)
    assert len(_index(out)) == 2


# -- 5. non-finite embeddings are errors -----------------------------------------------------------------------------
def test_nan_weights_give_error_rows(ckpt, tmp_path):
    encoder, meta = load_checkpoint(ckpt)
    with torch.no_grad():
        encoder.fc[0].weight[0, 0] = float("nan")
    broken = tmp_path / "broken.safetensors"
    save_checkpoint(broken, encoder, meta["frontend"], meta["norm_stats"], {"source": "test"})
    paths = _clips(tmp_path / "in", 3)
    done = _cli("embed", str(tmp_path / "in"), "--checkpoint", str(broken), "--out", str(tmp_path / "out"),
                "--num_workers", "0", "--progress", "False")
    assert done.returncode == 1, done.stderr
    rows = _index(tmp_path / "out")
    assert len(rows) == len(paths) and all(r["status"] == "error" and "not finite" in r["error"] for r in rows)
    assert np.load(tmp_path / "out" / "embeddings.npy").shape == (0, 32)


# -- 6. every input is accounted for ---------------------------------------------------------------------------------
def test_every_input_gets_a_row_and_reruns_do_not_grow_the_state(ckpt, tmp_path):
    folder = tmp_path / "in"
    _clips(folder, 2)
    os.symlink(folder / "gone.flac", folder / "broken.wav")
    sf.write(folder / "odd.wav", make_tone(0.6, seed=7), 16000)
    os.rename(folder / "odd.wav", os.path.join(os.fsencode(folder), b"caf\xe9.wav"))  # Latin-1: not valid UTF-8
    os.mkfifo(folder / "pipe.wav")
    (folder / "dir.wav").mkdir()
    out = tmp_path / "out"
    args = ("embed", str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--num_workers", "0",
            "--progress", "False")
    for _ in range(3):
        done = _cli(*args)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert len(list((out / ".byola_embed").glob("shard_*.npz"))) == 1
    rows = {Path(r["file"]).name: r for r in _index(out)}
    assert set(rows) == {"00.wav", "01.wav", "caf\\xe9.wav", "broken.wav", "pipe.wav", "dir.wav"}
    assert rows["caf\\xe9.wav"]["status"] == "ok" and rows["00.wav"]["status"] == "ok"
    assert "broken link" in rows["broken.wav"]["error"]
    assert "not a regular file" in rows["pipe.wav"]["error"]
    assert "folder" in rows["dir.wav"]["error"]
    assert "failed: " in done.stderr and "index.csv" in done.stderr


def test_scan_corpus_and_embed_list_inputs_alike(tmp_path):
    from byola.data import scan_corpus

    folder = tmp_path / "in"
    clips = _clips(folder / "sub", 2)
    os.symlink(clips[0], folder / "alias.wav")  # another name of the same file: once
    os.symlink(folder / "gone.wav", folder / "broken.wav")
    listing = tmp_path / "list.txt"
    listing.write_text(f"in/sub\n{clips[1]}\n")
    for sources in ([folder], [listing, folder]):
        with pytest.warns(UserWarning, match=r"1 input\(s\) name a file already listed.*00.wav is .*alias.wav"):
            assert scan_corpus(sources) == embed_mod.collect_inputs(sources)
    with pytest.warns(UserWarning, match="1 input"):
        assert str(folder / "broken.wav") in scan_corpus([folder])


def test_a_second_name_of_the_same_file_is_said_in_one_line(ckpt, tmp_path):
    """Two names of one file (a link beside its target) are embedded once, under the first name in sorted order:
    never silently, the command says which name stood for which, one line, and files.Inputs records it."""
    clips = _clips(tmp_path / "in", 2)
    os.symlink(clips[0], tmp_path / "in" / "zz_alias.wav")
    found = list_inputs([tmp_path / "in"], (".wav",))
    assert found.aliases == {str(tmp_path / "in" / "zz_alias.wav"): str(clips[0])}
    done = _cli("embed", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"),
                "--num_workers", "0", "--progress", "False")
    assert done.returncode == 0, done.stderr
    assert [r["file"] for r in _index(tmp_path / "out")] == [str(c) for c in clips]
    said = [line for line in done.stderr.splitlines() if "zz_alias.wav" in line]
    assert len(said) == 1 and said[0].startswith("byola embed: warning: ") and str(clips[0]) in said[0], done.stderr


def test_a_file_changed_since_the_last_run_is_embedded_again(ckpt, tmp_path):
    """A rerun never reuses the embedding of a file whose content changed (another size, or the same size
    rewritten): it embeds it again and says so; an unchanged file is reused."""
    paths = _clips(tmp_path / "in", 3)
    out = tmp_path / "out"
    model = byola.load(ckpt)
    run = dict(num_workers=0, progress=False)
    model.embed_files(paths, out, **run)
    size = paths[2].stat().st_size
    shutil.copyfile(paths[0], paths[1])  # `cp 00.wav 01.wav`: another clip, another size
    sf.write(paths[2], make_tone(0.7, freq=900, seed=99), 16000)  # rewritten in place, same size
    assert paths[2].stat().st_size == size
    summary = model.embed_files(paths, out, **run)
    assert (summary.ok, summary.reused, summary.changed) == (3, 1, 2)
    assert "2 changed since the last run" in summary.describe()
    rows, matrix = _index(out), np.load(out / "embeddings.npy")
    fresh = tmp_path / "fresh"
    model.embed_files(paths, fresh, **run)
    assert rows == _index(fresh)  # the durations of the new contents
    np.testing.assert_allclose(matrix, np.load(fresh / "embeddings.npy"), rtol=0, atol=1e-6)
    assert model.embed_files(paths, out, **run).reused == 3  # recorded again: unchanged now


def test_a_rerun_with_fewer_inputs_says_what_it_left_out(ckpt, tmp_path):
    """Files of earlier runs that are not among the inputs are left out of the new output, in one line; they stay
    in the resume state and are reused by a later run that includes them."""
    paths = _clips(tmp_path / "in", 3)
    out = tmp_path / "out"
    model = byola.load(ckpt)
    run = dict(num_workers=0, progress=False)
    model.embed_files(paths, out, **run)
    fewer = model.embed_files(paths[:1], out, **run)
    assert (fewer.ok, fewer.left_out) == (1, 2) and len(_index(out)) == 1
    said = [line for line in fewer.describe().splitlines() if "not among these inputs" in line]
    assert len(said) == 1 and said[0].lstrip().startswith("2 files of earlier runs"), fewer.describe()
    again = model.embed_files(paths, out, **run)
    assert (again.reused, again.left_out) == (3, 0) and "not among" not in again.describe()


@pytest.mark.parametrize("first, then", [("parquet", "npy"), ("npy", "parquet")])
def test_switching_format_removes_the_other_formats_files(ckpt, tmp_path, first, then):
    paths = _clips(tmp_path / "in", 2)
    out = tmp_path / "out"
    model = byola.load(ckpt)
    model.embed_files(paths, out, num_workers=0, progress=False, format=first)
    model.embed_files(paths, out, num_workers=0, progress=False, format=then)
    left = sorted(str(p.relative_to(out)) for p in out.iterdir() if p.name != ".byola_embed")
    assert left == (["embeddings.npy", "index.csv", "manifest.json"] if then == "npy" else
                    ["manifest.json", "parquet"])
    assert len(embed_mod.read_embeddings(out).index) == 2


# -- 7. normalization statistics are explicit and reproducible ----------------------------------------------------
def test_statistics_computed_from_inputs_are_recorded_and_reused(bare_ckpt, tmp_path):
    paths = _clips(tmp_path / "in", 4)
    out = tmp_path / "out"
    common = ("--checkpoint", str(bare_ckpt), "--out", str(out), "--num_workers", "0", "--progress", "False")
    first = _cli("embed", *map(str, paths[:2]), *common)
    assert first.returncode == 0, first.stderr
    before = np.load(out / "embeddings.npy")
    loud = tmp_path / "loud.wav"
    sf.write(loud, 0.99 * np.sign(make_tone(1.0, freq=90)), 16000)  # would move computed statistics a lot
    second = _cli("embed", *map(str, paths[:2]), str(loud), *common)
    assert second.returncode == 0, second.stderr
    assert "recorded in" in second.stderr
    after = np.load(out / "embeddings.npy")
    np.testing.assert_array_equal(after[:2], before)
    recorded = json.loads((out / ".byola_embed" / "settings.json").read_text())["settings"]["norm_stats"]
    model = byola.load(bare_ckpt, norm_stats=(recorded["mean"], recorded["std"]))
    wave, sr = sf.read(loud, dtype="float32")
    np.testing.assert_allclose(after[2], model.embed(wave, sr).numpy(), rtol=1e-4, atol=1e-4)


def test_convert_stores_statistics_computed_from_a_folder(tmp_path):
    from tests.test_checkpoint import official_state

    torch.save(official_state(1, 512), tmp_path / "v1.pth")
    _clips(tmp_path / "in", 3)
    done = _cli("convert", str(tmp_path / "v1.pth"), str(tmp_path / "v1.safetensors"), "--norm_stats_from",
                str(tmp_path / "in"))
    assert done.returncode == 0, done.stderr
    stats = read_metadata(tmp_path / "v1.safetensors")["norm_stats"]
    printed = _cli("stats", str(tmp_path / "in"), "--checkpoint", str(tmp_path / "v1.safetensors"))
    mean, std = map(float, printed.stdout.strip().split(","))
    assert stats["mean"] == pytest.approx(mean, rel=1e-6) and stats["std"] == pytest.approx(std, rel=1e-6)


# -- 8. invalid options ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", [("--batch_size", "0"), ("--batch_size", "-4"), ("--num_workers", "-1")])
def test_invalid_options_give_one_line(ckpt, tmp_path, option):
    _clips(tmp_path / "in", 1)
    done = _cli("embed", str(tmp_path / "in"), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out"), *option)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert option[0].lstrip("-") in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# -- 9. convert never destroys a file; checkpoints follow the umask ---------------------------------------------
def test_convert_refuses_its_source_and_existing_files(tmp_path):
    from tests.test_checkpoint import official_state

    src = tmp_path / "v1.pth"
    torch.save(official_state(1, 512), src)
    original = src.read_bytes()
    os.symlink(src, tmp_path / "alias.pth")
    for dst in (src, tmp_path / "alias.pth"):
        done = _cli("convert", str(src), str(dst), "--overwrite")
        assert done.returncode != 0 and "source" in done.stderr and "Traceback" not in done.stderr
    assert src.read_bytes() == original
    existing = tmp_path / "other.safetensors"
    existing.write_bytes(b"keep me")
    done = _cli("convert", str(src), str(existing))
    assert done.returncode != 0 and "--overwrite" in done.stderr
    assert existing.read_bytes() == b"keep me"
    assert _cli("convert", str(src), str(existing), "--overwrite").returncode == 0
    assert read_metadata(existing)["encoder"]["name"] == "AudioNTT2020"


def test_checkpoints_follow_the_umask(ckpt, tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "m.safetensors"
        encoder, meta = load_checkpoint(ckpt)
        save_checkpoint(path, encoder, meta["frontend"], None, {"source": "test"})
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(old)


# -- 12. evaluation cache -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["truncate", "foreign"])
def test_damaged_eval_cache_is_reported_and_recomputed(tmp_path, damage):
    from tests.test_eval_run import BandEmbedder, _dataset, read_audio
    from byola.evaluation import load_task
    from byola.evaluation.run import embed_fold

    task = load_task(_dataset(tmp_path / "data"))
    fold = task.folds()[0]
    first, _, hit = embed_fold(task, fold, BandEmbedder(), tmp_path / "cache", audio_loader=read_audio,
                               progress=False)
    reference = np.array(first)
    del first
    (cached,) = (tmp_path / "cache").rglob("*.npy")
    if damage == "truncate":
        cached.write_bytes(cached.read_bytes()[:200])
    else:  # another array of the same shape where the cache was
        np.save(cached, np.zeros_like(reference))
    again = BandEmbedder()
    with pytest.warns(UserWarning, match="not used"):
        emb, _, hit = embed_fold(task, fold, again, tmp_path / "cache", audio_loader=read_audio, progress=False)
    assert not hit and again.embedded == len(task)
    np.testing.assert_array_equal(np.array(emb), reference)


def test_a_refused_resume_names_both_precisions():
    """fp32 is left out of the settings (older outputs stay valid): the refusal shows it as fp32, not None."""
    from byola.embed_job import differences

    assert differences({"precision": "bf16", "a": 1}, {"a": 1}) == ["precision ('bf16' there, 'fp32' now)"]
    assert differences({"x": {"precision": 1}}, {"x": {}}) == ["x.precision (1 there, None now)"]
