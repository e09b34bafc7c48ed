"""byola.frontend: shapes, config, input checks, devices, and agreement of the three backends on real audio."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchaudio

from byola.audio import load_audio
from byola.frontend import BACKENDS, EPS, LogMelSpectrogram
from tests.conftest import shared_data

# Parity is measured where the reference (librosa) mel power is above REL_FLOOR x the clip's maximum: below that the
# float32 STFT's rounding (~1e-7 of the peak) and eps dominate the log, which says nothing about the backends.
REL_FLOOR = 1e-8
# Measured (benchmarks/frontend_parity.py, 300 real clips of spcv2_12 + fsdd): masked max |diff| <= 2.6e-4 nats,
# mean 1.4e-6 nats for every backend pair (per clip, up to 2.6e-6 mean on the 20 clips first checked). Bounds with
# ~4x margin:
MAX_ABS_NATS = 1e-3
MEAN_ABS_NATS = 1e-5


def _generated() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(24000) / 16000
    chirp = 0.5 * torch.sin(2 * np.pi * (50 + 2500 * t) * t)
    return {
        "chirp+noise": chirp + 0.01 * torch.randn(t.shape, generator=g),
        "white": 0.3 * torch.randn(t.shape, generator=g),
        "quiet_tone": 1e-3 * torch.sin(2 * np.pi * 440 * t),
        "loud_clipped": torch.clamp(3 * torch.sin(2 * np.pi * 97 * t), -1, 1),
    }


def _real_clips() -> dict[str, torch.Tensor]:
    spc = sorted(shared_data("spcv2_12", "audio").rglob("*.flac"))[::400][:6]
    fsdd = sorted(shared_data("fsdd", "audio").glob("*.wav"))[::500][:6]
    return {p.name: load_audio(p, 16000) for p in spc + fsdd}


def _parity(a: torch.Tensor, b: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    power = ref.exp()
    mask = power > REL_FLOOR * power.amax()
    d = (a - b).abs()[mask]
    return d.max().item(), d.mean().item()


@pytest.fixture(scope="module")
def frontends() -> dict[str, LogMelSpectrogram]:
    return {b: LogMelSpectrogram(backend=b) for b in BACKENDS}


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes(frontends, backend):
    m = frontends[backend]
    x = 0.1 * torch.randn(3, 16000)
    y = m(x)
    assert y.shape == (3, 64, 16000 // 160 + 1) == (3, 64, m.n_frames(16000)) and y.dtype == torch.float32
    assert m(x[0]).shape == (1, 64, 101)
    assert m(torch.randn(1, 16001)).shape[-1] == 16001 // 160 + 1
    torch.testing.assert_close(m(x[1:2]), y[1:2], atol=1e-4, rtol=0)  # batching does not change a clip's result
    assert torch.allclose(m(torch.zeros(1, 4000)), torch.tensor(np.log(EPS), dtype=torch.float32))


def test_defaults_are_byol_a():
    cfg = LogMelSpectrogram().config()
    assert cfg == {"sample_rate": 16000, "n_fft": 1024, "win_length": 1024, "hop_length": 160, "n_mels": 64,
                   "f_min": 60.0, "f_max": 7800.0, "power": 2.0, "eps": float(torch.finfo(torch.float32).eps),
                   "backend": "nnaudio"}


@pytest.mark.parametrize("backend", BACKENDS)
def test_config_round_trips_through_json(backend):
    m = LogMelSpectrogram(n_mels=40, hop_length=320, f_min=0.0, f_max=8000.0, backend=backend)
    cfg = json.loads(json.dumps(m.config()))
    again = LogMelSpectrogram(**cfg)
    assert again.config() == m.config()
    x = 0.1 * torch.randn(1, 8000)
    torch.testing.assert_close(again(x), m(x))


@pytest.mark.parametrize("backend", BACKENDS)
def test_input_checks(frontends, backend):
    m = frontends[backend]
    with pytest.raises(TypeError, match="floating-point"):
        m(torch.zeros(1, 16000, dtype=torch.int16))
    with pytest.raises(TypeError, match="torch.Tensor"):
        m(np.zeros((1, 16000), np.float32))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        m(torch.zeros(2, 1, 16000))
    with pytest.raises(ValueError, match="too short"):
        m(torch.zeros(1, 512))


@pytest.mark.parametrize("kwargs", [dict(backend="essentia"), dict(f_max=9000.0), dict(win_length=2048),
                                    dict(hop_length=0), dict(eps=0.0)])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        LogMelSpectrogram(**kwargs)


@pytest.mark.parametrize("backend", ["nnaudio", "torchaudio"])
def test_runs_where_it_sits(backend):
    """Everything the computation needs is a buffer: on the meta device no CPU constant can sneak in."""
    m = LogMelSpectrogram(backend=backend)
    assert sum(b.numel() for b in m.buffers()) > 0 and not list(m.parameters())
    assert m.state_dict() == {}  # derived from config(): nothing to save
    y = m.to("meta")(torch.zeros(2, 16000, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 64, 101)
    m64 = LogMelSpectrogram(backend=backend).double()
    assert m64(torch.randn(1, 16000, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("backend", ["nnaudio", "torchaudio"])
def test_full_precision_under_autocast(frontends, backend):
    x = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    ref = frontends[backend](x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = frontends[backend](x)
    assert y.dtype == torch.float32 and torch.equal(y, ref)


@pytest.mark.parametrize("backend", ["nnaudio", "torchaudio"])
@pytest.mark.parametrize("n,block,chunk", [(16000 * 3 + 37, 5000, 100), (8159, 999, 7), (900, 100000, 3),
                                           (48000, 16000, 6000)])
def test_stream_equals_whole_waveform(frontends, backend, n, block, chunk):
    m = frontends[backend]
    x = 0.1 * torch.randn(n, generator=torch.Generator().manual_seed(n))
    chunks = list(m.stream(x.split(block), chunk_frames=chunk))
    assert all(c.shape == (64, chunk) for c in chunks[:-1]) and 0 < chunks[-1].shape[1] <= chunk
    whole = m(x)[0]
    joined = torch.cat(chunks, dim=1)
    assert joined.shape == whole.shape
    # Measured: torchaudio <= 3.6e-7, nnaudio <= 3e-6 nats (float rounding of differently sized convolutions).
    assert (joined - whole).abs().max().item() <= 2e-5


def test_stream_rejects_batches(frontends):
    with pytest.raises(ValueError, match="1-D"):
        list(frontends["torchaudio"].stream([torch.zeros(2, 16000)]))


def _check_parity(frontends, clips):
    worst = {}
    for name, wave in clips.items():
        out = {b: frontends[b](wave)[0] for b in BACKENDS}
        for a, b in [("nnaudio", "librosa"), ("torchaudio", "librosa"), ("nnaudio", "torchaudio")]:
            mx, mean = _parity(out[a], out[b], out["librosa"])
            assert mx <= MAX_ABS_NATS and mean <= MEAN_ABS_NATS, (name, a, b, mx, mean)
            worst[a, b] = max(worst.get((a, b), 0.0), mx)
    return worst


def test_backends_agree_on_generated_audio(frontends):
    worst = _check_parity(frontends, _generated())
    assert max(worst.values()) > 0  # the backends really are different code


def test_backends_agree_on_real_clips(frontends):
    clips = _real_clips()
    assert len(clips) >= 10
    _check_parity(frontends, clips)


def test_htk_default_filters_would_fail_the_bound(frontends):
    """torchaudio's default mel filters (HTK scale, peak-normalized triangles) differ from librosa's by nats."""
    htk = torchaudio.transforms.MelSpectrogram(sample_rate=16000, n_fft=1024, win_length=1024, hop_length=160,
                                               f_min=60.0, f_max=7800.0, n_mels=64)
    for name, wave in _generated().items():
        ref = frontends["librosa"](wave)[0]
        mx, mean = _parity(torch.log(htk(wave) + EPS), ref, ref)
        assert mean > 0.5 and mx > 5.0, name  # measured: mean 0.9-5.7, max 6.7-16 nats
