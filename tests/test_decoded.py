"""Decode once: byola.decoded.DecodedWaves, and statistics + embedding with each file decoded once giving the same
bytes as two decoding passes; embed_files' default worker count."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import byola
from byola import embed_job as embed_mod
from byola.checkpoint import save_checkpoint
from byola.decoded import DecodedWaves
from byola.frontend import LogMelSpectrogram
from byola.models import build_encoder

from tests.conftest import make_tone


def test_store_keeps_waves_bit_for_bit_and_spills_beyond_the_limit(tmp_path: Path) -> None:
    waves = {tmp_path / f"{k}.wav": torch.from_numpy(make_tone(0.5 + k / 10, seed=k)) for k in range(4)}
    limit = sum(w.numel() * 4 for w in list(waves.values())[:2])
    with DecodedWaves(max_bytes=limit, spill_dir=tmp_path) as store:
        for path, wave in waves.items():
            store.put(path, wave)
        assert len(store) == 4 and store.spilled == 2 and store.memory_bytes <= limit
        spill = store._spill
        assert spill is not None and len(list(spill.glob("*.npy"))) == 2
        for path, wave in waves.items():
            kept = store.get(path)
            assert kept.dtype == torch.float32 and torch.equal(kept, wave)
        assert store.get(tmp_path / "other.wav") is None
    assert not spill.exists() and len(store) == 0


@pytest.fixture(scope="module")
def no_stats_ckpt(tmp_path_factory) -> Path:
    """A checkpoint without normalization statistics (like a converted official file)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "nostats.safetensors"
    save_checkpoint(path, build_encoder("AudioNTT2020", n_mels=64, d=64), LogMelSpectrogram().config(), None,
                    {"source": "test"})
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """Generated files of several lengths and rates, one unreadable, one longer than max_load_sec (streamed)."""
    d = tmp_path_factory.mktemp("in")
    files = []
    for k in range(40):
        sr = (16000, 22050, 8000)[k % 3]
        files.append(d / f"{k:02d}.wav")
        sf.write(files[-1], make_tone(0.6 + (k % 5) * 0.3, sample_rate=sr, freq=200.0 + 50 * k, seed=k), sr)
    files.append(d / "bad.wav")
    files[-1].write_bytes(b"not audio")
    files.append(d / "long.wav")
    sf.write(files[-1], np.tile(make_tone(1.0, seed=99), 4), 16000)
    return sorted(files)


def _two_pass(ckpt: Path, files: list[Path], out: Path, **kw) -> bytes:
    model = byola.load(ckpt)
    model.fit_norm_stats(files)
    model.embed_files(files, out, progress=False, max_load_sec=3.0, **kw)
    return (out / "embeddings.npy").read_bytes()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_decode_once_gives_the_two_pass_bytes(no_stats_ckpt, inputs, tmp_path: Path, monkeypatch,
                                              num_workers: int) -> None:
    expected = _two_pass(no_stats_ckpt, inputs, tmp_path / "two", num_workers=num_workers)
    model = byola.load(no_stats_ckpt)
    with DecodedWaves(max_bytes=100_000, spill_dir=tmp_path) as decoded:  # some in memory, some spilled
        model.fit_norm_stats(inputs, keep=decoded)
        assert len(decoded) == len(inputs) - 1 and decoded.spilled > 0  # all but the unreadable one
        decodes = []
        real = embed_mod.load_audio_if_shorter
        monkeypatch.setattr(embed_mod, "load_audio_if_shorter", lambda path, *a: decodes.append(path) or real(path, *a))
        model.embed_files(inputs, tmp_path / "once", progress=False, max_load_sec=3.0, num_workers=num_workers,
                          decoded=decoded)
    assert (tmp_path / "once" / "embeddings.npy").read_bytes() == expected
    assert (tmp_path / "once" / "index.csv").read_text() == (tmp_path / "two" / "index.csv").read_text()
    if num_workers == 0:  # (worker processes decode in their own copy of the module)
        # decoded again: only the unreadable file and the one over embed's max_load_sec (kept, but streamed)
        assert sorted(Path(p).name for p in decodes) == ["bad.wav", "long.wav"]


def test_default_workers_none_for_a_handful_of_files(monkeypatch) -> None:
    monkeypatch.setattr(embed_mod.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert embed_mod.default_num_workers(1, 64, on_cpu=True) == 0
    assert embed_mod.default_num_workers(32, 64, on_cpu=True) == 0
    assert embed_mod.default_num_workers(33, 64, on_cpu=True) == 2
    assert embed_mod.default_num_workers(1000, 64, on_cpu=True) == 4
    assert embed_mod.default_num_workers(1000, 64, on_cpu=False) == 2
    assert embed_mod.default_num_workers(10, 64, on_cpu=False) == 0
