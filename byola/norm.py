"""Log-mel normalization: exact dataset statistics (pre-norm) and per-batch standardization (post-norm)."""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from byola.audio import AudioError, load_audio, load_audio_if_shorter, stream_audio
from byola.frontend import LogMelSpectrogram

CROPS = ("random", "start", "center")


@dataclass(frozen=True)
class NormStats:
    """Scalar mean and standard deviation (population, ddof=0) of log-mel values; ``count`` = values used."""

    mean: float
    std: float
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormStats:
        """Inverse of :meth:`to_dict`; ``count`` may be absent (as in checkpoint metadata ``{mean, std}``)."""
        return cls(mean=float(d["mean"]), std=float(d["std"]), count=int(d.get("count", 0)))


class _Moments:
    """Count, mean and sum of squared deviations in float64, merged with Chan et al.'s pairwise update.

    Each clip's moments are computed on its own and merged in input order, so the result depends neither on how
    clips are grouped into batches nor on a running-mean approximation.
    """

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, n: int, mean: float, m2: float) -> None:
        if n == 0:
            return
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def add_rows(self, values: torch.Tensor) -> None:
        """Merge each row of ``values`` ``[N, ...]`` (one clip or chunk per row) in order."""
        rows = values.double().flatten(1)
        means = rows.mean(dim=1)
        m2s = (rows - means[:, None]).square().sum(dim=1)
        for mean, m2 in zip(means.tolist(), m2s.tolist()):
            self.add(rows.shape[1], mean, m2)


def _crop_or_pad(wave: torch.Tensor, length: int, crop: str, rng_seed: tuple[int, int]) -> torch.Tensor:
    if wave.numel() < length:  # BYOL-A pads short clips with zeros at the end
        return torch.nn.functional.pad(wave, (0, length - wave.numel()))
    slack = wave.numel() - length
    start = {"start": 0, "center": slack // 2}.get(crop)
    if start is None:
        start = int(np.random.default_rng(rng_seed).integers(0, slack + 1))
    return wave[start:start + length]


def _as_wave(item: Any, sample_rate: int) -> torch.Tensor:
    if isinstance(item, (str, os.PathLike)):
        return load_audio(item, sample_rate)
    wave = torch.as_tensor(item)
    if wave.ndim != 1 or not wave.is_floating_point():
        raise ValueError(f"expected a file path or a 1-D float waveform, got {type(item).__name__} "
                         f"of shape {tuple(wave.shape)} and dtype {wave.dtype}")
    return wave.float()


def compute_norm_stats(
    waves_or_paths: Iterable[Any],
    frontend: LogMelSpectrogram,
    sample_rate: int = 16000,
    unit_sec: float | None = None,
    crop: str = "random",
    seed: int = 0,
    batch_size: int = 64,
    skip_errors: bool = False,
    progress: bool = True,
    max_load_sec: float = 60.0,
    on_decoded: Callable[[Any, torch.Tensor], None] | None = None,
) -> NormStats:
    """Exact mean/std of ``frontend``'s log-mel values over all clips, streaming one batch at a time.

    Items are file paths (decoded with :func:`byola.audio.load_audio` at ``sample_rate``) or 1-D float waveforms
    already at ``sample_rate``. With ``unit_sec``, each clip is cut to that length like BYOL-A's training input:
    zero-padded at the end when shorter, cropped when longer (``crop``: ``"random"``, BYOL-A's choice, seeded per
    clip by ``(seed, index)``; ``"start"``; ``"center"``). Consecutive clips of equal length are run through the
    front end together (up to ``batch_size``). Without ``unit_sec``, files longer than ``max_load_sec`` are streamed
    (:func:`byola.audio.stream_audio` and :meth:`LogMelSpectrogram.stream`), so memory does not grow with a file's
    length. Moments are accumulated in float64 per clip (or chunk) and merged in order (Chan et al.), so the result
    does not depend on batching beyond the front end's own float32 rounding.

    A bad file raises :class:`AudioError`; with ``skip_errors=True`` bad files are left out and reported in one
    warning at the end. ``on_decoded(path, wave)`` is called with each file decoded whole (e.g.
    :meth:`byola.decoded.DecodedWaves.put`, so that a second pass need not decode it again).
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if sample_rate != frontend.sample_rate:
        raise ValueError(f"sample_rate {sample_rate} differs from the front end's {frontend.sample_rate}")
    if unit_sec is not None and unit_sec <= 0:
        raise ValueError(f"unit_sec must be positive, got {unit_sec}")
    if batch_size < 1 or max_load_sec <= 0:
        raise ValueError(f"need batch_size >= 1 and max_load_sec > 0, got {batch_size}, {max_load_sec}")
    device = next(iter(frontend.buffers()), torch.empty(0)).device
    unit = None if unit_sec is None else round(unit_sec * sample_rate)
    moments, errors = _Moments(), []

    def flush(batch: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            moments.add_rows(frontend(torch.stack(batch).to(device)))
        batch.clear()

    def streamed(path: str | os.PathLike) -> _Moments:
        clip = _Moments()
        with torch.inference_mode():
            blocks = stream_audio(path, sample_rate, block_seconds=max_load_sec)
            for chunk in frontend.stream(block.to(device) for block in blocks):
                clip.add_rows(chunk[None])
        return clip

    total = len(waves_or_paths) if hasattr(waves_or_paths, "__len__") else None
    bar = tqdm(waves_or_paths, total=total, desc="norm stats", unit="clip", disable=not progress)
    batch: list[torch.Tensor] = []
    for index, item in enumerate(bar):
        try:
            if unit is None and isinstance(item, (str, os.PathLike)):
                wave = load_audio_if_shorter(item, max_load_sec, sample_rate)  # one open decides and decodes
                if wave is not None and on_decoded is not None:
                    on_decoded(item, wave)
                if wave is None:
                    clip = streamed(item)  # before flushing: a bad file must leave no trace
                    if batch:
                        flush(batch)
                    moments.add(clip.n, clip.mean, clip.m2)
                    continue
            else:
                wave = _as_wave(item, sample_rate)
        except AudioError as e:
            if not skip_errors:
                raise
            errors.append(e)
            continue
        if unit is not None:
            wave = _crop_or_pad(wave, unit, crop, (seed, index))
        if batch and (wave.numel() != batch[0].numel() or len(batch) == batch_size):
            flush(batch)
        batch.append(wave)
    if batch:
        flush(batch)

    if errors:
        shown = "; ".join(str(e) for e in errors[:5]) + ("; ..." if len(errors) > 5 else "")
        warnings.warn(f"compute_norm_stats skipped {len(errors)} unreadable file(s): {shown}", stacklevel=2)
    if moments.n == 0:
        raise ValueError("no audio to compute normalization statistics from")
    std = math.sqrt(moments.m2 / moments.n)
    if not (math.isfinite(moments.mean) and math.isfinite(std)):
        raise ValueError(f"non-finite statistics (mean={moments.mean}, std={std}): check the input waveforms")
    return NormStats(mean=moments.mean, std=std, count=moments.n)


class PreNormalization(nn.Module):
    """``(x - mean) / std`` with dataset statistics (BYOL-A's pre-normalization of log-mels).

    The scalars are non-persistent buffers: they follow ``.to(device)`` but stay out of the state dict (checkpoints
    keep them in their metadata).
    """

    def __init__(self, mean: float, std: float):
        super().__init__()
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"need finite mean and std > 0, got mean={mean}, std={std}")
        self.register_buffer("mean", torch.tensor(float(mean)), persistent=False)
        self.register_buffer("std", torch.tensor(float(std)), persistent=False)

    @classmethod
    def from_stats(cls, stats: NormStats) -> PreNormalization:
        return cls(stats.mean, stats.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean.item():.6g}, std={self.std.item():.6g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class PostNormalization(nn.Module):
    """Standardize a batch with its own statistics (BYOL-A's post-normalization of augmented views).

    For ``[B, C, F, T]`` input, mean and std are taken per channel over ``(B, F, T)`` (BYOL-A's layout, C = 1);
    for any other shape, over all elements. The std is the unbiased one (torch's default), clamped below at
    ``eps`` (default float32 machine epsilon) so that a constant batch maps to zeros instead of NaN.
    """

    def __init__(self, eps: float = float(torch.finfo(torch.float32).eps)):
        super().__init__()
        self.eps = eps

    def extra_repr(self) -> str:
        return f"eps={self.eps:g}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = (0, 2, 3) if x.ndim == 4 else tuple(range(x.ndim))
        mean = x.mean(dim=dims, keepdim=True)
        std = x.std(dim=dims, keepdim=True).clamp(min=self.eps)
        return (x - mean) / std
