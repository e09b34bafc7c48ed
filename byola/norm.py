"""Log-mel normalization: exact dataset statistics and running statistics (pre-norm), per-batch standardization
(post-norm), and the one streaming-moments merge they share (:func:`merge_moments`)."""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from byola.audio import AudioError, crop_or_pad, load_audio, load_audio_if_shorter, stream_audio
from byola.errors import UsageError
from byola.frontend import LogMelSpectrogram

CROPS = ("random", "start", "center")
# Files per task of a CPU worker process, in the statistics pass and in `byola.embed_job`'s embedding pass.
WORKER_CHUNK_FILES = 32


@dataclass(frozen=True)
class NormStats:
    """Scalar mean and standard deviation of log-mel values (what pre-normalization subtracts and divides by:
    :func:`compute_norm_stats` gives the population std, ddof 0; :class:`RunningNorm` the sample std, ddof 1, that it
    trained with; the two differ by a factor ``sqrt(count / (count - 1))``); ``count`` = values used."""

    mean: float
    std: float
    count: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormStats:
        """Inverse of :meth:`to_dict`; ``count`` may be absent (as in checkpoint metadata ``{mean, std}``)."""
        return cls(mean=float(d["mean"]), std=float(d["std"]), count=int(d.get("count", 0)))


def merge_moments(a: tuple[Any, Any, Any], b: tuple[Any, Any, Any]) -> tuple[Any, Any, Any]:
    """Chan et al.'s pairwise merge of two ``(count, mean, m2)`` triples (``m2``: sum of squared deviations from the
    mean), exact up to rounding; python floats or (float64) tensors. The one merge of byola's streaming statistics:
    the variance is ``m2 / (count - ddof)``, with the ``ddof`` its user states."""
    (n_a, mean_a, m2_a), (n_b, mean_b, m2_b) = a, b
    total = n_a + n_b
    delta = mean_b - mean_a
    return total, mean_a + delta * n_b / total, m2_a + (m2_b + delta * delta * n_a * n_b / total)


class _Moments:
    """Count, mean and sum of squared deviations in float64, merged with :func:`merge_moments`.

    Each clip's moments are computed on its own and merged in input order, so the result depends neither on how
    clips are grouped into batches nor on a running-mean approximation.
    """

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, n: int, mean: float, m2: float) -> None:
        if n == 0:
            return
        self.n, self.mean, self.m2 = merge_moments((self.n, self.mean, self.m2), (n, mean, m2))

    def add_rows(self, values: torch.Tensor) -> None:
        """Merge each row of ``values`` ``[N, ...]`` (one clip or chunk per row) in order."""
        for clip in _row_moments(values):
            self.add(*clip)


def _row_moments(values: torch.Tensor) -> list[tuple[int, float, float]]:
    """Float64 ``(count, mean, m2)`` of each row of ``values`` ``[N, ...]``."""
    rows = values.double().flatten(1)
    means = rows.mean(dim=1)
    m2s = (rows - means[:, None]).square().sum(dim=1)
    return [(rows.shape[1], mean, m2) for mean, m2 in zip(means.tolist(), m2s.tolist())]


def _crop_start(slack: int, crop: str, rng_seed: tuple[int, int]) -> int:
    start = {"start": 0, "center": slack // 2}.get(crop)
    return int(np.random.default_rng(rng_seed).integers(0, slack + 1)) if start is None else start


def _as_wave(item: Any, sample_rate: int) -> torch.Tensor:
    if isinstance(item, (str, os.PathLike)):
        return load_audio(item, sample_rate)
    wave = torch.as_tensor(item)
    if wave.ndim != 1 or not wave.is_floating_point():
        raise ValueError(f"expected a file path or a 1-D float waveform, got {type(item).__name__} "
                         f"of shape {tuple(wave.shape)} and dtype {wave.dtype}")
    return wave.float()


def _clip_moments(indexed_items: Iterable[tuple[int, Any]], frontend: LogMelSpectrogram, sample_rate: int,
                  unit: int | None, crop: str, seed: int, batch_size: int, max_load_sec: float,
                  keep_waves: bool) -> Iterator[tuple[Any, tuple[int, float, float] | AudioError, Any]]:
    """``(item, moments, wave)`` per ``(index, item)``: the clip's float64 ``(count, mean, m2)`` (in input order
    among clips) or the :class:`AudioError` that keeps it out (yielded at once), and, with ``keep_waves``, the
    waveform of a file decoded whole (else None). Consecutive clips of equal length share a front-end call."""
    device = next(iter(frontend.buffers()), torch.empty(0)).device
    pending: list[tuple[Any, torch.Tensor, Any]] = []

    def flush() -> Iterator[tuple[Any, tuple[int, float, float], Any]]:
        with torch.inference_mode():
            clips = _row_moments(frontend(torch.stack([wave for _, wave, _ in pending]).to(device)))
        for (item, _, kept), clip in zip(pending, clips):
            yield item, clip, kept
        pending.clear()

    for index, item in indexed_items:
        kept = None
        try:
            if unit is None and isinstance(item, (str, os.PathLike)):
                wave = load_audio_if_shorter(item, max_load_sec, sample_rate)  # one open decides and decodes
                if wave is None:  # long: streamed in bounded memory, its chunks merged into one clip
                    clip = _Moments()
                    with torch.inference_mode():
                        blocks = stream_audio(item, sample_rate, block_seconds=max_load_sec)
                        for chunk in frontend.stream(block.to(device) for block in blocks):
                            clip.add_rows(chunk[None])
                    if pending:
                        yield from flush()
                    yield item, (clip.n, clip.mean, clip.m2), None
                    continue
                kept = wave if keep_waves else None
            else:
                wave = _as_wave(item, sample_rate)
        except AudioError as e:
            yield item, e, None
            continue
        if unit is not None:
            # BYOL-A pads short clips with zeros at the end
            start = _crop_start(wave.numel() - unit, crop, (seed, index)) if wave.numel() >= unit else 0
            wave = crop_or_pad(wave, unit, start)
        try:
            frontend.check_input(wave)  # the front end's own rule: a clip too short for it is an input problem
        except ValueError as err:
            yield item, AudioError(item if isinstance(item, (str, os.PathLike)) else f"clip {index}", str(err)), None
            continue
        if pending and (wave.numel() != pending[0][1].numel() or len(pending) == batch_size):
            yield from flush()
        pending.append((item, wave, kept))
    if pending:
        yield from flush()


class _FileChunks(Dataset):
    """Chunk k of a list of files -> its `_clip_moments` records, waveforms as numpy arrays (pickled back from a
    worker process: thousands of shared-memory tensors would each hold a file descriptor there)."""

    def __init__(self, paths: Sequence[Any], keep_waves: bool, **clip_moments_kwargs: Any) -> None:
        self.paths, self.keep_waves, self.kwargs = paths, keep_waves, clip_moments_kwargs

    def __len__(self) -> int:
        return -(-len(self.paths) // WORKER_CHUNK_FILES)

    def __getitem__(self, k: int) -> list[tuple[Any, Any, Any]]:
        first = k * WORKER_CHUNK_FILES
        items = zip(range(first, first + WORKER_CHUNK_FILES), self.paths[first:first + WORKER_CHUNK_FILES])
        return [(item, moments, None if wave is None else wave.numpy())
                for item, moments, wave in _clip_moments(items, keep_waves=self.keep_waves, **self.kwargs)]


def unbatched(chunk: list) -> list:
    """DataLoader collate function for datasets whose items are already chunks (lists): keeps them as they are."""
    return chunk


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
    num_workers: int = 0,
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

    ``num_workers`` > 0 decodes and computes log-mels in that many worker processes of one torch thread each, in
    chunks of files merged in input order (for a list of file paths without ``unit_sec`` and a front end on the CPU;
    otherwise ignored): one thread per process keeps the pass fast when other jobs share the cores, where a
    multi-threaded process waits for its descheduled threads at every operation.

    A bad file (unreadable, or too short for the front end) raises :class:`AudioError`; with ``skip_errors=True``
    bad files are left out and reported in one
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
    unit = None if unit_sec is None else round(unit_sec * sample_rate)
    kwargs = dict(frontend=frontend, sample_rate=sample_rate, unit=unit, crop=crop, seed=seed, batch_size=batch_size,
                  max_load_sec=max_load_sec)
    keep_waves = on_decoded is not None
    total = len(waves_or_paths) if hasattr(waves_or_paths, "__len__") else None
    on_cpu = next(iter(frontend.buffers()), torch.empty(0)).device.type == "cpu"
    if num_workers > 0 and unit is None and on_cpu and isinstance(waves_or_paths, Sequence) and \
            all(isinstance(item, (str, os.PathLike)) for item in waves_or_paths):
        chunks = _FileChunks(waves_or_paths, keep_waves, **kwargs)
        loader = DataLoader(chunks, batch_size=None, num_workers=min(num_workers, len(chunks)),
                            collate_fn=unbatched)
        records = ((item, moments, None if wave is None else torch.from_numpy(wave))
                   for chunk in loader for item, moments, wave in chunk)
    else:
        records = _clip_moments(enumerate(waves_or_paths), keep_waves=keep_waves, **kwargs)
    moments, errors = _Moments(), []
    for item, clip, wave in tqdm(records, total=total, desc="norm stats", unit="clip", disable=not progress):
        if isinstance(clip, AudioError):
            if not skip_errors:
                raise clip
            errors.append(clip)
            continue
        moments.add(*clip)
        if wave is not None:
            on_decoded(item, wave)

    if errors:
        shown = "; ".join(str(e) for e in errors[:5]) + ("; ..." if len(errors) > 5 else "")
        warnings.warn(f"normalization statistics: skipped {len(errors)} unreadable or too short file(s): {shown}",
                      stacklevel=2)
    if moments.n == 0:
        raise UsageError("no audio to compute normalization statistics from",
                         f"all {len(errors)} unreadable (see the warning)" if errors else "give at least one clip")
    std = math.sqrt(moments.m2 / moments.n)
    if not (math.isfinite(moments.mean) and math.isfinite(std)):
        raise UsageError(f"non-finite statistics (mean={moments.mean}, std={std})", "check the input waveforms")
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


class RunningNorm(nn.Module):
    """Pre-normalization with running statistics (BYOL-A v1's option): while fewer than ``max_samples`` samples
    have been seen in training mode, each batch's moments are merged (exactly, float64, :func:`merge_moments`) into
    the running mean/variance, and the batch is normalized with the statistics so far (its own included). After that
    the statistics are frozen. The std is the sample std (ddof 1, as ``torch.std`` in BYOL-A v1), and :meth:`stats`
    exports that same value, so a model is embedded with the normalization it was trained with. ``count``, ``mean``
    and ``m2`` are buffers (checkpointed). Under DDP each process accumulates its own data's statistics (rank 0's
    are exported)."""

    def __init__(self, max_samples: int) -> None:
        super().__init__()
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.max_samples = int(max_samples)
        self.register_buffer("samples", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("m2", torch.zeros((), dtype=torch.float64))
        self._samples = 0  # host mirror of `samples`: no device sync in the hot path

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._samples = int(self.samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self._samples < self.max_samples:
            xd = x.detach().double()
            mean_b = xd.mean()
            batch = (float(xd.numel()), mean_b, ((xd - mean_b) ** 2).sum())
            self.count, self.mean, self.m2 = merge_moments((self.count, self.mean, self.m2), batch)
            self._samples += x.shape[0]
            self.samples.fill_(self._samples)
        std = (self.m2 / (self.count - 1).clamp(min=1)).sqrt().clamp(min=torch.finfo(torch.float32).eps)
        return (x - self.mean.to(x.dtype)) / std.to(x.dtype)

    def stats(self) -> NormStats:
        """The statistics so far: mean and sample std (ddof 1, the value training normalized with) over ``count``
        values. Raises ``ValueError`` before two values were seen."""
        count = float(self.count)
        if count < 2:
            raise ValueError("RunningNorm has seen no data yet")
        return NormStats(mean=float(self.mean), std=math.sqrt(float(self.m2) / (count - 1)), count=int(count))
