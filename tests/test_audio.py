"""byola.audio: decoding, mono mix, resampling, block streaming and the errors for bad files."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from byola.audio import AUDIO_EXTENSIONS, AudioError, audio_duration, load_audio, resample, stream_audio
from tests.conftest import shared_data


def _noise(seconds: float, sr: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Band-rich test signal: a chirp plus noise, [frames, channels] float32 in [-1, 1)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sr))) / sr
    chirp = 0.4 * np.sin(2 * np.pi * (100 + 0.45 * sr / 2 * t / max(seconds, 1e-9)) * t)
    x = chirp[:, None] + 0.1 * rng.standard_normal((t.size, channels))
    return np.clip(x, -0.99, 0.99).astype(np.float32)


def _berklee_mp3() -> Path:
    # 5.7 s, 44.1 kHz. Read in 1 s blocks through plain soundfile, it decodes differently from a whole-file read
    # (runs of zeros after soundfile's approximate MPEG seek); byola.audio must not.
    path = shared_data("berklee_unlabeled", "audio") / "Analogsynth2_higher.mp3"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def test_extensions_are_lower_case_with_dot():
    assert {".wav", ".flac", ".ogg", ".mp3"} <= set(AUDIO_EXTENSIONS)
    assert all(e.startswith(".") and e == e.lower() for e in AUDIO_EXTENSIONS)


@pytest.mark.parametrize("ext,subtype", [
    ("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "PCM_32"), ("wav", "FLOAT"), ("wav", "DOUBLE"),
    ("flac", "PCM_16"), ("flac", "PCM_24"), ("ogg", "VORBIS"), ("opus", "OPUS"), ("aiff", "PCM_16"),
    ("aif", "PCM_24"),
])
def test_decodes_formats_to_float32_mono(tmp_path, ext, subtype):
    x = _noise(0.5, 16000)[:, 0]
    path = tmp_path / f"x.{ext}"
    fmt = {"opus": "OGG", "aif": "AIFF"}.get(ext)
    sf.write(path, x, 16000, subtype=subtype, format=fmt)
    y = load_audio(path, 16000)
    assert y.dtype == torch.float32 and y.ndim == 1 and y.numel() == x.size
    if subtype in ("VORBIS", "OPUS"):  # lossy: bound the relative error energy instead
        assert np.linalg.norm(y.numpy() - x) / np.linalg.norm(x) < 0.3
    else:
        assert np.abs(y.numpy() - x).max() <= (1 / 2**15 if subtype == "PCM_16" else 1e-6)


def test_multichannel_is_averaged_then_resampled(tmp_path):
    x = _noise(0.7, 44100, channels=3)
    path = tmp_path / "three.wav"
    sf.write(path, x, 44100, subtype="FLOAT")
    y = load_audio(path, 16000)
    expected = AF.resample(torch.from_numpy(x.mean(axis=1)), 44100, 16000)
    assert y.shape == expected.shape == (int(np.ceil(x.shape[0] * 16000 / 44100)),)
    torch.testing.assert_close(y, expected, atol=1e-6, rtol=0)
    assert y.numel() != load_audio(path, 44100).numel()


def test_int_samples_scaled_to_unit_range(tmp_path):
    path = tmp_path / "full.wav"
    sf.write(path, np.array([32767, -32768, 0] * 100, np.int16), 8000, subtype="PCM_16")
    y = load_audio(path, 8000)
    assert y.max().item() == pytest.approx(32767 / 32768) and y.min().item() == -1.0


def test_resample_preserves_a_sine():
    f0 = 1000.0
    x = torch.sin(2 * np.pi * f0 * torch.arange(44100, dtype=torch.float64) / 44100).float()
    y = resample(x, 44100, 16000)
    ref = torch.sin(2 * np.pi * f0 * torch.arange(16000, dtype=torch.float64) / 16000).float()
    assert y.shape == ref.shape
    assert (y[200:-200] - ref[200:-200]).abs().max() < 1e-3  # edges see zero padding
    assert resample(x, 16000, 16000) is x
    with pytest.raises(ValueError):
        resample(x, 0, 16000)


def test_audio_duration_from_header(tmp_path):
    path = tmp_path / "d.flac"
    sf.write(path, _noise(1.25, 22050), 22050)
    assert audio_duration(path) == pytest.approx(1.25, abs=1 / 22050)


def test_mp3_real_clip():
    path = _berklee_mp3()
    y = load_audio(path)
    assert y.dtype == torch.float32 and y.ndim == 1 and torch.isfinite(y).all()
    assert y.numel() == pytest.approx(audio_duration(path) * 16000, abs=2)


# ---------------------------------------------------------------- bad input

def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated(tmp_path: Path, ext: str, **kw) -> Path:
    full = tmp_path / f"full.{ext}"
    sf.write(full, _noise(2.0, 16000), 16000, **kw)
    data = full.read_bytes()
    return _write_bytes(tmp_path / f"cut.{ext}", data[: len(data) // 2])


def _bad_float(tmp_path: Path, value: float) -> Path:
    x = _noise(0.2, 16000)[:, 0]
    x[100] = value
    path = tmp_path / "bad.wav"
    sf.write(path, x, 16000, subtype="FLOAT")
    return path


def _flac_without_length(tmp_path: Path) -> Path:
    path = tmp_path / "nolength.flac"
    sf.write(path, _noise(0.5, 16000), 16000)
    data = bytearray(path.read_bytes())
    data[21] &= 0xF0  # STREAMINFO's 36-bit total-samples field: 0 means "unknown"
    data[22:26] = bytes(4)
    return _write_bytes(path, bytes(data))


BAD_CASES = {
    "missing": (lambda d: d / "nope.wav", "not found"),
    "directory": (lambda d: (d / "dir.wav").mkdir() or d / "dir.wav", "not a regular file"),
    "empty": (lambda d: _write_bytes(d / "empty.wav", b""), "empty file"),
    "text_as_wav": (lambda d: _write_bytes(d / "x.wav", b"hello, I am not audio\n" * 50), "not a recognised audio"),
    "text_as_mp3": (lambda d: _write_bytes(d / "x.mp3", b"hello, I am not audio\n" * 50), "not a recognised audio"),
    "truncated_wav": (lambda d: _truncated(d, "wav"), "truncated"),
    "truncated_flac": (lambda d: _truncated(d, "flac"), "corrupt or truncated"),
    "truncated_ogg": (lambda d: _truncated(d, "ogg"), "truncated"),
    "zero_length": (lambda d: sf.write(d / "zero.wav", np.zeros(0, np.float32), 16000) or d / "zero.wav",
                    "zero-length"),
    "no_length": (_flac_without_length, "no sample count"),
    "nan": (lambda d: _bad_float(d, np.nan), "NaN/Inf"),
    "inf": (lambda d: _bad_float(d, np.inf), "NaN/Inf"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_clear_error(tmp_path, case):
    make, reason = BAD_CASES[case]
    path = make(tmp_path)
    for fn in (load_audio, lambda p: torch.cat(list(stream_audio(p, block_seconds=0.1)))):
        with pytest.raises(AudioError) as info:
            fn(path)
        assert str(path) in str(info.value) and reason in str(info.value)
        assert info.value.path == str(path) and reason in info.value.reason


def test_truncated_mp3(tmp_path):
    data = _berklee_mp3().read_bytes()
    path = _write_bytes(tmp_path / "cut.mp3", data[: len(data) // 2])
    with pytest.raises(AudioError, match="truncated"):
        load_audio(path)


def test_audio_error_pickles():
    import pickle
    err = pickle.loads(pickle.dumps(AudioError("a.wav", "broken")))
    assert (err.path, err.reason, str(err)) == ("a.wav", "broken", "a.wav: broken")


# ---------------------------------------------------------------- streaming

@pytest.mark.parametrize("sr,channels,block_seconds", [
    (44100, 2, 0.37), (44100, 1, 1.0), (8000, 1, 0.5), (48000, 2, 0.25), (22050, 1, 0.3), (16000, 2, 0.3),
])
def test_stream_matches_whole_file(tmp_path, sr, channels, block_seconds):
    path = tmp_path / "long.wav"
    sf.write(path, _noise(3.3, sr, channels), sr, subtype="FLOAT")
    whole = load_audio(path, 16000)
    blocks = list(stream_audio(path, 16000, block_seconds))
    assert len(blocks) >= 4
    assert all(b.dtype == torch.float32 and b.ndim == 1 for b in blocks)
    joined = torch.cat(blocks)
    assert joined.shape == whole.shape
    # Measured: max |diff| <= 6e-8 (float rounding of the same sinc taps); 1e-6 leaves margin.
    assert (joined - whole).abs().max().item() <= 1e-6


def test_stream_mp3_matches_whole_file():
    path = _berklee_mp3()
    whole = load_audio(path)
    blocks = list(stream_audio(path, 16000, block_seconds=1.0))
    assert len(blocks) >= 5
    joined = torch.cat(blocks)
    assert joined.shape == whole.shape
    assert (joined - whole).abs().max().item() <= 1e-6


def test_stream_memory_does_not_grow_with_length(tmp_path):
    peaks = []
    for seconds in (10, 40):
        path = tmp_path / f"{seconds}.wav"
        sf.write(path, _noise(seconds, 48000), 48000, subtype="PCM_16")
        tracemalloc.start()
        n = sum(b.numel() for b in stream_audio(path, 16000, block_seconds=0.5))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        assert n == seconds * 16000
    whole_file_bytes = 40 * 48000 * 4
    assert peaks[1] < 1.5 * peaks[0] + 100_000  # does not scale with the 4x longer file
    assert peaks[1] < whole_file_bytes / 10


def test_stream_rejects_bad_block(tone_wav):
    with pytest.raises(ValueError):
        next(stream_audio(tone_wav, block_seconds=0))


@pytest.mark.parametrize("case", ["missing", "empty", "text_as_wav", "truncated_wav", "zero_length", "no_length"])
def test_audio_duration_rejects_bad_headers(tmp_path, case):
    make, reason = BAD_CASES[case]
    with pytest.raises(AudioError, match=reason):
        audio_duration(make(tmp_path))


def test_streamed_wav_with_unknown_size_loads(tmp_path):
    """Writers to a pipe leave 0xFFFFFFFF as the RIFF/data sizes: not a truncation."""
    import struct

    x = _noise(0.5, 16000)[:, 0]
    path = tmp_path / "piped.wav"
    sf.write(path, x, 16000, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    data[4:8] = data[at + 4:at + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    assert np.abs(load_audio(path).numpy() - x).max() <= 1 / 2**15


def test_crop_or_pad_is_one_mechanism_for_tensors_and_arrays(tmp_path) -> None:
    from byola.audio import crop_or_pad

    wave = torch.arange(10.0)
    assert crop_or_pad(wave, 4, start=6).tolist() == [6, 7, 8, 9]
    assert crop_or_pad(wave[:3], 5).tolist() == [0, 1, 2, 0, 0]
    assert crop_or_pad(wave[:3], 5, pad_before=1).tolist() == [0, 0, 1, 2, 0]
    assert crop_or_pad(torch.ones(2, 3), 4, pad_before=1).tolist() == [[0, 1, 1, 1], [0, 1, 1, 1]]
    np.save(tmp_path / "w.npy", np.arange(10, dtype=np.float16))
    mapped = np.load(tmp_path / "w.npy", mmap_mode="r")
    cut = crop_or_pad(mapped, 3, start=2)
    assert isinstance(cut, np.ndarray) and cut.dtype == np.float16 and cut.tolist() == [2, 3, 4]
    padded = crop_or_pad(mapped[:2], 4, pad_before=2)
    assert padded.dtype == np.float16 and padded.tolist() == [0, 0, 0, 1]
    for kwargs in ({"start": 7}, {"start": -1}):
        with pytest.raises(ValueError, match="crop start"):
            crop_or_pad(wave, 4, **kwargs)
    with pytest.raises(ValueError, match="pad_before"):
        crop_or_pad(wave[:3], 5, pad_before=3)
