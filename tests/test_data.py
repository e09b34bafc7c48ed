"""Corpus scanning and random-crop datasets (byola.data)."""
from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import DataLoader

from byola.audio import load_audio
from byola.data import RandomCropDataset, scan_corpus

_spec = importlib.util.spec_from_file_location("_conftest_for_data", Path(__file__).with_name("conftest.py"))
_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_conftest)
shared_data = _conftest.shared_data


pytestmark = pytest.mark.usefixtures("one_thread")


def _tone(path: Path, seconds: float, sr: int = 16000, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t) + 0.05 * rng.standard_normal(t.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave.astype(np.float32), sr)
    return path


@pytest.fixture
def corpus(tmp_path: Path) -> list[Path]:
    return [_tone(tmp_path / "c" / f"f{i}.wav", 1.5 + 0.25 * i, seed=i) for i in range(4)] + \
           [_tone(tmp_path / "c" / "short.wav", 0.5, seed=9)]


def test_scan_folders_lists_dedup_and_order(tmp_path: Path) -> None:
    a = _tone(tmp_path / "root" / "b" / "x.WAV", 0.1)
    b = _tone(tmp_path / "root" / "a" / "deep" / "y.flac", 0.1)
    (tmp_path / "root" / "notes.txt").write_text("not audio")
    c = _tone(tmp_path / "other" / "z.wav", 0.1)
    d = _tone(tmp_path / "other" / "sub" / "w.wav", 0.1)
    os.symlink(c, tmp_path / "root" / "link.wav")  # same file under another name: kept once
    lst = tmp_path / "other" / "list.txt"
    lst.write_text("# a comment\n\nz.wav\n" + str(a) + "\nsub\n")
    files = scan_corpus([tmp_path / "root", lst, c])
    assert files == sorted(files)
    assert {os.path.realpath(f) for f in files} == {str(p.resolve()) for p in (a, b, c, d)}
    assert len(files) == 4
    assert scan_corpus(str(c)) == [str(c)]
    with pytest.raises(FileNotFoundError, match="nope"):
        scan_corpus([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no audio files"):
        scan_corpus([tmp_path / "empty"])
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(ValueError, match="not a UTF-8 text list"):
        scan_corpus([tmp_path / "bin.txt"])


def test_crops_reproducible_exact_and_worker_independent(corpus: list[Path]) -> None:
    ds = RandomCropDataset(corpus, unit_sec=0.95, seed=3)
    assert ds.unit_samples == 15200 and len(ds) == 5
    x = ds[1]
    full = load_audio(corpus[1])
    starts = [s for s in range(len(full) - 15200 + 1) if torch.equal(full[s:s + 15200], x)]
    assert len(starts) == 1  # an exact slice of the decoded file
    assert torch.equal(ds[1], x)
    ds.set_epoch(1)
    assert not torch.equal(ds[1], x)
    assert torch.equal(RandomCropDataset(corpus, seed=3)[1], x)
    assert not torch.equal(RandomCropDataset(corpus, seed=4)[1], x)
    # The short file is zero-padded evenly on both sides.
    short = ds[4]
    n = 8000
    gap = 15200 - n
    assert torch.equal(short[gap // 2:gap // 2 + n], load_audio(corpus[4]))
    assert not short[:gap // 2].any() and not short[gap // 2 + n:].any()
    # Same items with 0 and 2 DataLoader workers.
    ds.set_epoch(0)
    b0 = torch.cat(list(DataLoader(ds, batch_size=2, num_workers=0)))
    b2 = torch.cat(list(DataLoader(ds, batch_size=2, num_workers=2)))
    assert torch.equal(b0, b2)


def test_unreadable_files_skipped_and_reported_once(corpus: list[Path], tmp_path: Path,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    junk = tmp_path / "c" / "f0_junk.wav"  # sorts before f1.wav, its substitute
    junk.write_bytes(b"RIFF not really a wav file" * 20)
    empty = tmp_path / "c" / "empty.flac"
    empty.write_bytes(b"")
    files = scan_corpus([tmp_path / "c"])
    assert len(files) == 7
    with caplog.at_level(logging.WARNING, logger="byola.data"):
        ds = RandomCropDataset(files)
    assert len(ds) == 5 and set(ds.unreadable) == {str(junk), str(empty)}
    records = [r for r in caplog.records if r.name == "byola.data"]
    assert len(records) == 1 and "f0_junk.wav" in records[0].getMessage() and "empty.flac" in records[0].getMessage()

    # Without the header check, the bad file is found while decoding: reported once, replaced by the next file.
    caplog.clear()
    ds = RandomCropDataset(files, probe=False)
    bad = files.index(str(junk))
    with caplog.at_level(logging.WARNING, logger="byola.data"):
        items = [ds[bad] for _ in range(3)]
        ds.set_epoch(1)
        items.append(ds[bad])
    assert len([r for r in caplog.records if "f0_junk.wav" in r.getMessage()]) == 1
    assert ds.failed_files == [str(junk)]
    assert torch.equal(items[0], items[1]) and torch.equal(items[0], items[2])
    # The substitute is the next file's crop drawn with this item's (seed, epoch, index) generator.
    rng = np.random.default_rng([0, 0, bad])
    full = load_audio(files[bad + 1]).numpy()
    start = int(rng.integers(0, len(full) - 15200 + 1))
    assert torch.equal(items[0], torch.from_numpy(full[start:start + 15200]))

    # Failures found in DataLoader workers are flagged in memory shared with the main process.
    ds = RandomCropDataset(files, probe=False)
    list(DataLoader(ds, batch_size=1, num_workers=2))
    assert set(ds.failed_files) == {str(junk), str(empty)}


def test_decoded_cache(corpus: list[Path], tmp_path: Path) -> None:
    plain = RandomCropDataset(corpus, seed=1)
    cached = RandomCropDataset(corpus, seed=1, cache_dir=tmp_path / "cache")
    for i in range(len(corpus)):
        assert torch.equal(cached[i], plain[i])  # first read decodes and writes the cache
    assert len(list((tmp_path / "cache").glob("*.npy"))) == len(corpus)
    again = RandomCropDataset(corpus, seed=1, cache_dir=tmp_path / "cache")
    for i in range(len(corpus)):
        assert torch.equal(again[i], plain[i])  # later reads come from the memory-mapped cache
    half = RandomCropDataset(corpus, seed=1, cache_dir=tmp_path / "cache16", cache_dtype="float16")
    torch.testing.assert_close(half[0], plain[0], atol=1e-3, rtol=0)
    half[0]
    assert np.load(next((tmp_path / "cache16").glob("*.npy"))).dtype == np.float16


def test_real_corpus_scan_and_crop() -> None:
    root = shared_data("fsdd")
    files = scan_corpus([root])
    assert len(files) == 3000 and all(f.endswith(".wav") for f in files)
    ds = RandomCropDataset(files[:8], probe=True)
    batch = torch.stack([ds[i] for i in range(len(ds))])
    assert batch.shape == (8, 15200) and torch.isfinite(batch).all()
