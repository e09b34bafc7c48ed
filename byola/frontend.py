"""BYOL-A's log-mel spectrogram front end, with three interchangeable backends.

All backends compute the same thing: a Hann-windowed STFT (``center=True``, reflect padding), the power spectrum,
Slaney-style mel filters (librosa's default: Slaney mel scale, area-normalized triangles) and ``log(mel + eps)``.

- ``"nnaudio"`` (the class's default; BYOL-A v2 used it): nnAudio's conv1d STFT, kernels held as buffers, runs on any
  device.
- ``"torchaudio"`` (:data:`DEFAULT_BACKEND`: byola's everywhere else): torchaudio's Slaney filterbank
  (``melscale_fbanks(norm="slaney", mel_scale="slaney")``; its default HTK filters without area normalization would
  differ from librosa's by several nats) applied to a ``torch.fft`` power spectrum (`_BandedMelSpectrogram`), runs
  on any device.
- ``"librosa"``: the reference (BYOL-A v1's front end), ``librosa.feature.melspectrogram`` on CPU numpy arrays. It
  is slow, copies the input to the CPU and back, and is not differentiable: use it to check the others.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn

from byola.extras import optional_module

librosa = optional_module("librosa", "librosa")  # the `librosa` extra: the librosa backend only

BACKENDS = ("nnaudio", "torchaudio", "librosa")
# The log-mel byola computes unless told otherwise (`byola embed`, `byola.load`, `byola convert`'s statistics; the audio
# recipes name it): the same log-mel as the others, the fastest on a CPU (README, "Embedding audio").
DEFAULT_BACKEND = "torchaudio"
# LogMelSpectrogram's own default differs: it stays BYOL-A v2's (nnAudio, the official code's) so that
# `LogMelSpectrogram()`, `default_frontend_config()` and a recipe without `frontend.backend` compute what they did.
MODULE_DEFAULT_BACKEND = "nnaudio"
EPS = float(torch.finfo(torch.float32).eps)


class LogMelSpectrogram(nn.Module):
    """Waveforms ``[B, T]`` (or ``[T]``) at ``sample_rate`` -> log-mel ``[B, n_mels, T // hop_length + 1]``.

    Defaults are BYOL-A's: 16 kHz, n_fft = win = 1024, hop 160 (10 ms), 64 mels over 60-7800 Hz, power 2,
    ``log(x + eps)`` with eps = float32 machine epsilon. The filters and windows are non-persistent buffers:
    ``.to(device)`` moves them and the state dict stays empty (``config()`` describes the module). Inputs are cast
    to the buffers' float dtype (float32 unless converted; librosa: float32). Under autocast it stays in float32.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 1024,
        win_length: int = 1024,
        hop_length: int = 160,
        n_mels: int = 64,
        f_min: float = 60.0,
        f_max: float = 7800.0,
        power: float = 2.0,
        eps: float = EPS,
        backend: str = MODULE_DEFAULT_BACKEND,
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if not 0 < win_length <= n_fft or hop_length <= 0 or n_mels <= 0:
            raise ValueError(f"need 0 < win_length <= n_fft, hop_length > 0, n_mels > 0; got win_length={win_length}, "
                             f"n_fft={n_fft}, hop_length={hop_length}, n_mels={n_mels}")
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate / 2; got {f_min}, {f_max}, {sample_rate}")
        if power <= 0 or eps <= 0:
            raise ValueError(f"power and eps must be positive; got {power}, {eps}")
        self.sample_rate, self.n_fft, self.win_length, self.hop_length = int(sample_rate), n_fft, win_length, hop_length
        self.n_mels, self.f_min, self.f_max = n_mels, float(f_min), float(f_max)
        self.power, self.eps, self.backend = float(power), float(eps), backend

        self.melspec: nn.Module | None = None
        if backend == "nnaudio":
            from nnAudio.features import MelSpectrogram

            self.melspec = MelSpectrogram(
                sr=self.sample_rate, n_fft=n_fft, win_length=win_length, n_mels=n_mels, hop_length=hop_length,
                window="hann", center=True, pad_mode="reflect", power=self.power, htk=False, fmin=self.f_min,
                fmax=self.f_max, norm=1, trainable_mel=False, trainable_STFT=False, verbose=False)
        elif backend == "torchaudio":
            self.melspec = _BandedMelSpectrogram(self.sample_rate, n_fft, win_length, hop_length, self.f_min,
                                                 self.f_max, n_mels, self.power)
        else:
            librosa.feature  # noqa: B018 - reading an attribute imports the extra: fail now if it is missing

        if self.melspec is not None:
            # Windows, STFT kernels and filters are derived from config(): keep them out of the state dict (it stays
            # empty, so saved models do not depend on the backend) while they still follow .to(device).
            for module in self.melspec.modules():
                for name, buf in list(module.named_buffers(recurse=False)):
                    module.register_buffer(name, buf, persistent=False)

    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-able dict: ``LogMelSpectrogram(**m.config())`` rebuilds ``m``."""
        return {"sample_rate": self.sample_rate, "n_fft": self.n_fft, "win_length": self.win_length,
                "hop_length": self.hop_length, "n_mels": self.n_mels, "f_min": self.f_min, "f_max": self.f_max,
                "power": self.power, "eps": self.eps, "backend": self.backend}

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.config().items())

    def n_frames(self, n_samples: int) -> int:
        """Frames produced for a waveform of ``n_samples`` (center=True)."""
        return n_samples // self.hop_length + 1

    def stream(self, blocks: Iterable[torch.Tensor], chunk_frames: int = 6000) -> Iterator[torch.Tensor]:
        """Log-mel chunks ``[n_mels, n]`` (n = ``chunk_frames`` except the last) of ONE waveform given as 1-D blocks.

        Memory stays bounded by a chunk plus a block. The frames ``[a, b)`` of a chunk are computed from samples
        ``[a·hop - C, b·hop + C)`` with ``C`` the smallest multiple of the hop >= n_fft / 2, so every window lies
        inside real samples and reflect padding happens only at the waveform's own edges: concatenated along time,
        the chunks equal ``self(whole_waveform)[0]`` up to float rounding.
        """
        if chunk_frames < 1:
            raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
        hop = self.hop_length
        context = hop * math.ceil(self.n_fft / 2 / hop)
        buffer: torch.Tensor | None = None
        start = 0  # sample index of buffer[0]
        done = 0  # frames already emitted
        for block in blocks:
            if block.ndim != 1:
                raise ValueError(f"stream() takes 1-D blocks of one waveform, got shape {tuple(block.shape)}")
            buffer = block if buffer is None else torch.cat([buffer, block.to(buffer.device)])
            while (done + chunk_frames) * hop + context <= start + len(buffer):
                lo = max(done * hop - context, 0)
                mel = self(buffer[lo - start:(done + chunk_frames) * hop + context - start])[0]
                first = (done * hop - lo) // hop
                yield mel[:, first:first + chunk_frames]
                done += chunk_frames
                keep = max(done * hop - context, 0)
                buffer, start = buffer[keep - start:], keep
        if buffer is None:
            return
        total = start + len(buffer)
        n_frames = total // hop + 1
        while done < n_frames:
            stop = min(done + chunk_frames, n_frames)
            lo = max(done * hop - context, 0)
            hi = min(stop * hop + context, total)  # at `total`, the waveform's own end (reflect-padded as whole)
            first = (done * hop - lo) // hop
            yield self(buffer[lo - start:hi - start])[0][:, first:first + stop - done]
            done = stop

    def check_input(self, wave: torch.Tensor) -> torch.Tensor:
        """``wave`` as a batch ``[B, T]``, checked as `forward` needs it: a floating-point tensor ``[T]`` or
        ``[B, T]`` longer than ``n_fft // 2`` samples (reflect padding); raises TypeError/ValueError otherwise."""
        if not isinstance(wave, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor waveform, got {type(wave).__name__}")
        if not wave.is_floating_point():
            raise TypeError(f"expected a floating-point waveform in [-1, 1], got dtype {wave.dtype}")
        if wave.ndim == 1:
            wave = wave.unsqueeze(0)
        if wave.ndim != 2:
            raise ValueError(f"expected a waveform [T] or a batch [B, T], got shape {tuple(wave.shape)}")
        if wave.shape[-1] <= self.n_fft // 2:
            raise ValueError(f"waveform of {wave.shape[-1]} samples is too short: reflect padding needs more than "
                             f"n_fft // 2 = {self.n_fft // 2}")
        return wave

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = self.check_input(wave)
        kind = wave.device.type
        if torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind):
            # Under mixed precision the STFT would run in fp16/bf16 (errors of ~0.02 nats): keep it in float32.
            with torch.autocast(kind, enabled=False):
                return self._log_mel(wave)
        return self._log_mel(wave)

    def _log_mel(self, wave: torch.Tensor) -> torch.Tensor:
        if self.melspec is None:
            mel = self._librosa(wave)
        else:
            dtype = next(self.melspec.buffers()).dtype  # float32 unless the module was converted (.double())
            mel = self.melspec(wave.to(dtype))
        return torch.log(mel + self.eps)

    def _librosa(self, wave: torch.Tensor) -> torch.Tensor:
        y = wave.detach().to("cpu", torch.float32).numpy()
        mel = librosa.feature.melspectrogram(
            y=y, sr=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window="hann", center=True, pad_mode="reflect", power=self.power, n_mels=self.n_mels, fmin=self.f_min,
            fmax=self.f_max, htk=False, norm="slaney")
        return torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)).to(wave.device)


class _BandedMelSpectrogram(nn.Module):
    """Power mel spectrogram ``[B, T] -> [B, n_mels, T // hop + 1]``: torch.stft's centred Hann frames, ``torch.fft``,
    and torchaudio's Slaney filterbank, applied band by band.

    Hand-written rather than ``torchaudio.transforms.MelSpectrogram`` (same numbers, within 1e-6 nats) for speed on
    CPU: that transform squares the complex spectrum through ``abs()``, measured at 2.6 µs per 1024-point frame
    against 0.3 µs for squaring the real and imaginary parts as one real tensor, and multiplies every frequency bin
    with every filter, while each band of 16 consecutive filters covers only about a quarter of the bins (4x less
    work). With power 2, the squared real and imaginary parts meet the filters in one product, which also sums them.
    """

    def __init__(self, sample_rate: int, n_fft: int, win_length: int, hop_length: int, f_min: float, f_max: float,
                 n_mels: int, power: float, band_size: int = 16) -> None:
        super().__init__()
        import torchaudio

        self.n_fft, self.hop_length, self.power = n_fft, hop_length, power
        left = (n_fft - win_length) // 2  # torch.stft centres a shorter window in the frame
        window = torch.zeros(n_fft)
        window[left:left + win_length] = torch.hann_window(win_length)
        self.register_buffer("window", window, persistent=False)
        filters = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate,
                                                        norm="slaney", mel_scale="slaney")  # [freqs, mels]
        if power == 2:  # rows for the interleaved (real, imaginary) parts of each bin
            filters = filters.repeat_interleave(2, dim=0)
        self.bands: list[tuple[int, int]] = []  # rows [lo, hi) that band k's filters cover
        for k, first in enumerate(range(0, n_mels, band_size)):
            band = filters[:, first:first + band_size]
            rows = torch.nonzero(band.abs().sum(dim=1))[:, 0]
            lo, hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 1)
            self.bands.append((lo, hi))
            self.register_buffer(f"band{k}", band[lo:hi].contiguous(), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        half = self.n_fft // 2
        padded = nn.functional.pad(wave.unsqueeze(1), (half, half), mode="reflect").squeeze(1)
        spectrum = torch.fft.rfft(padded.unfold(-1, self.n_fft, self.hop_length) * self.window)  # [B, T, freqs]
        if self.power == 2:
            power = torch.view_as_real(spectrum).flatten(-2).square()
        else:
            power = spectrum.abs().pow(self.power)
        mel = torch.cat([power[..., lo:hi] @ getattr(self, f"band{k}") for k, (lo, hi) in enumerate(self.bands)],
                        dim=-1)
        return mel.transpose(1, 2)
