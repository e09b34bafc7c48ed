"""BYOL-A's log-mel spectrogram front end, with three interchangeable backends.

All backends compute the same thing: a Hann-windowed STFT (``center=True``, reflect padding), the power spectrum,
Slaney-style mel filters (librosa's default: Slaney mel scale, area-normalized triangles) and ``log(mel + eps)``.

- ``"nnaudio"`` (default; BYOL-A v2 used it): nnAudio's conv1d STFT, kernels held as buffers, runs on any device.
- ``"torchaudio"``: ``torchaudio.transforms.MelSpectrogram`` with ``norm="slaney", mel_scale="slaney"`` (its default
  HTK filters without area normalization would differ from librosa's by several nats), runs on any device.
- ``"librosa"``: the reference (BYOL-A v1's front end), ``librosa.feature.melspectrogram`` on CPU numpy arrays. It
  is slow, copies the input to the CPU and back, and is not differentiable: use it to check the others.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

BACKENDS = ("nnaudio", "torchaudio", "librosa")
EPS = float(torch.finfo(torch.float32).eps)


class LogMelSpectrogram(nn.Module):
    """Waveforms ``[B, T]`` (or ``[T]``) at ``sample_rate`` -> log-mel ``[B, n_mels, T // hop_length + 1]``.

    Defaults are BYOL-A's: 16 kHz, n_fft = win = 1024, hop 160 (10 ms), 64 mels over 60-7800 Hz, power 2,
    ``log(x + eps)`` with eps = float32 machine epsilon. The filters and windows are buffers, so ``.to(device)``
    moves them; inputs are cast to the buffers' float dtype (float32 unless converted; librosa: float32).
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
        backend: str = "nnaudio",
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
            import torchaudio

            self.melspec = torchaudio.transforms.MelSpectrogram(
                sample_rate=self.sample_rate, n_fft=n_fft, win_length=win_length, hop_length=hop_length,
                f_min=self.f_min, f_max=self.f_max, n_mels=n_mels, window_fn=torch.hann_window, power=self.power,
                normalized=False, center=True, pad_mode="reflect", norm="slaney", mel_scale="slaney")

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

    def _check(self, wave: torch.Tensor) -> torch.Tensor:
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
        wave = self._check(wave)
        if self.melspec is None:
            mel = self._librosa(wave)
        else:
            dtype = next(self.melspec.buffers()).dtype  # float32 unless the module was converted (.double())
            mel = self.melspec(wave.to(dtype))
        return torch.log(mel + self.eps)

    def _librosa(self, wave: torch.Tensor) -> torch.Tensor:
        import librosa

        y = wave.detach().to("cpu", torch.float32).numpy()
        mel = librosa.feature.melspectrogram(
            y=y, sr=self.sample_rate, n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.win_length,
            window="hann", center=True, pad_mode="reflect", power=self.power, n_mels=self.n_mels, fmin=self.f_min,
            fmax=self.f_max, htk=False, norm="slaney")
        return torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32)).to(wave.device)
