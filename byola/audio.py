"""Audio input: decode with soundfile, mix to mono, resample, stream long files in blocks.

Every failure to turn a file into finite samples raises :class:`AudioError`, which names the file and says what is
wrong, so callers can report it and carry on with the other files.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from .errors import UsageError

AUDIO_EXTENSIONS: tuple[str, ...] = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif", ".opus")

PathLike = str | os.PathLike

# Resampler settings (torchaudio's defaults), shared by `resample` and the block context of `stream_audio`.
_LOWPASS_FILTER_WIDTH = 6
_ROLLOFF = 0.99

# libsndfile's header log says e.g. "data : 384000 (should be 7593)" when a WAV/AIFF data chunk is cut short.
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
# Writers that stream to a pipe leave these "unknown size" placeholders in the header: not a truncation.
_UNKNOWN_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}
# libsndfile logs this when an Ogg stream stops before its end-of-stream page.
_OGG_CUT = re.compile(r"ended unexpectedly|lacks an end-of-stream", re.IGNORECASE)
# libsndfile's frame count for a header without a length (SF_COUNT_MAX).
_UNKNOWN_FRAMES = 2**63 - 1
# An MPEG header's frame count may be an estimate: accept up to this fraction fewer decoded frames before calling the
# file truncated.
_MPEG_LENGTH_SLACK = 0.01


class AudioError(UsageError):
    """A file that cannot be turned into audio samples; ``str()`` names the file and the reason."""

    def __init__(self, path: PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep it picklable (DataLoader workers send exceptions across processes)
        return (type(self), (self.path, self.reason))


class _SequentialSoundFile(sf.SoundFile):
    """A ``soundfile.SoundFile`` that reads strictly front to back.

    After every read, soundfile seeks to ``tell() + frames`` to keep its position. With libsndfile 1.2.2's MPEG
    decoder that seek is approximate: reading some berklee mp3 files in blocks then gave runs of zeros and other
    samples than one whole-file read. Reporting the file as not seekable skips that seek (we never seek).
    """

    def seekable(self) -> bool:
        return False


def _check_file(path: PathLike) -> None:
    if not os.path.exists(path):
        raise AudioError(path, "file not found")
    if not os.path.isfile(path):
        raise AudioError(path, "not a regular file")
    if os.path.getsize(path) == 0:
        raise AudioError(path, "empty file (0 bytes)")


def _open(path: PathLike) -> sf.SoundFile:
    """Open ``path`` for reading after checking it is a non-empty, untruncated audio file with samples."""
    _check_file(path)
    try:
        # Bytes, so that names which are not valid UTF-8 open too (soundfile encodes str names strictly).
        f = _SequentialSoundFile(os.fsencode(path))
    except sf.LibsndfileError as e:
        said = e.error_string.strip().rstrip(".")
        if "malformed" in said.lower():
            reason = f"corrupt or truncated audio (libsndfile: {said})"
        else:  # e.g. "Format not recognised"; libsndfile's other open errors are about content here too
            reason = f"not a recognised audio format, or a corrupt file (libsndfile: {said})"
        raise AudioError(path, reason) from None
    except (OSError, RuntimeError) as e:
        raise AudioError(path, f"cannot open: {e}") from None
    try:
        if _OGG_CUT.search(f.extra_info):
            raise AudioError(path, "truncated file: the Ogg stream ends without its end-of-stream page")
        if f.frames >= _UNKNOWN_FRAMES:
            raise AudioError(path, "unsupported file: its header gives no sample count (e.g. a FLAC written as a "
                                   "stream), which libsndfile cannot read through; re-encode it")
        if f.frames == 0:
            raise AudioError(path, "zero-length audio (the header declares 0 samples)")
        if f.samplerate <= 0:
            raise AudioError(path, f"invalid sample rate {f.samplerate}")
        for chunk, declared, actual in _SHORT_CHUNK.findall(f.extra_info):
            if int(declared) not in _UNKNOWN_SIZES and int(actual) < int(declared):
                raise AudioError(path, f"truncated file: the {chunk} chunk declares {declared} bytes, "
                                       f"only {actual} are present")
    except AudioError:
        f.close()
        raise
    return f


def _read(f: sf.SoundFile, path: PathLike, frames: int) -> np.ndarray:
    """Read up to ``frames`` frames as float32 mono (channel average); checks decoding errors and non-finite samples."""
    try:
        data = f.read(frames, dtype="float32", always_2d=True)
    except sf.LibsndfileError as e:
        said = e.error_string.strip().rstrip(".")
        raise AudioError(path, f"corrupt or truncated audio (libsndfile: {said})") from None
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if not np.isfinite(mono).all():
        bad = int((~np.isfinite(mono)).sum())
        raise AudioError(path, f"{bad} NaN/Inf sample(s) after decoding")
    return mono


def _check_length(path: PathLike, f: sf.SoundFile, decoded: int) -> None:
    if decoded == 0:
        raise AudioError(path, "zero-length audio (no samples could be decoded)")
    slack = int(f.frames * _MPEG_LENGTH_SLACK) if _is_mpeg(f) else 0
    if decoded < f.frames - slack:
        raise AudioError(path, f"truncated or corrupt file: decoded {decoded} of the {f.frames} frames in its header")


def _is_mpeg(f: sf.SoundFile) -> bool:
    return f.format == "MP3" or f.subtype.startswith("MPEG")


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample along the last dimension from ``orig_sr`` to ``new_sr`` Hz.

    Uses ``torchaudio.functional.resample`` (band-limited windowed-sinc, Hann window, 6 zero crossings, rolloff
    0.99): a well-kept, tested implementation that works on batched tensors on any device, so the same code serves
    data loading on CPU and on-the-fly resampling on GPU.
    """
    if orig_sr <= 0 or new_sr <= 0 or int(orig_sr) != orig_sr or int(new_sr) != new_sr:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return wave
    return AF.resample(wave, int(orig_sr), int(new_sr), lowpass_filter_width=_LOWPASS_FILTER_WIDTH, rolloff=_ROLLOFF)


def load_audio(path: PathLike, sample_rate: int = 16000) -> torch.Tensor:
    """Decode a whole file to a float32 mono 1-D tensor at ``sample_rate`` (channels averaged).

    Raises :class:`AudioError` for a missing, empty, corrupt, truncated or non-audio file, zero-length audio and
    NaN/Inf samples.
    """
    with _open(path) as f:
        return _decode_whole(f, path, sample_rate)


def load_audio_if_shorter(path: PathLike, max_seconds: float, sample_rate: int = 16000) -> torch.Tensor | None:
    """`load_audio`, or None without decoding when the header says the file lasts more than ``max_seconds`` (read
    those in bounded memory with `stream_audio`). Opens the file once for both (the open costs about a fifth of
    decoding a 1-s FLAC clip)."""
    with _open(path) as f:
        if f.frames > max_seconds * f.samplerate:
            return None
        return _decode_whole(f, path, sample_rate)


def _decode_whole(f: sf.SoundFile, path: PathLike, sample_rate: int) -> torch.Tensor:
    mono = _read(f, path, f.frames)
    _check_length(path, f, mono.size)
    return resample(torch.from_numpy(mono), f.samplerate, sample_rate)


def audio_duration(path: PathLike) -> float:
    """Duration in seconds, from the header (no decoding)."""
    with _open(path) as f:
        return f.frames / f.samplerate


def _resample_context(orig_sr: int, new_sr: int) -> tuple[int, int]:
    """(period, context) in input samples for block-wise resampling.

    ``period`` = orig_sr / gcd: blocks starting at multiples of it map to whole output samples. ``context`` is a
    multiple of ``period`` that covers torchaudio's sinc kernel half-width (same formula as its kernel builder) plus
    one period, so each kept output sample sees exactly the input it would see in a whole-file resample.
    """
    gcd = math.gcd(orig_sr, new_sr)
    period, new_p = orig_sr // gcd, new_sr // gcd
    width = math.ceil(_LOWPASS_FILTER_WIDTH * period / (min(period, new_p) * _ROLLOFF))
    context = math.ceil((width + period) / period) * period
    return period, context


def stream_audio(path: PathLike, sample_rate: int = 16000, block_seconds: float = 60.0) -> Iterator[torch.Tensor]:
    """Yield consecutive float32 mono blocks of about ``block_seconds`` at ``sample_rate``.

    Reads the file in soundfile blocks; each block is resampled together with a few input samples of context from
    its neighbours and the output is cropped back, so ``torch.cat(list(stream_audio(p)))`` matches
    ``load_audio(p)`` up to float rounding. At most three blocks are held at once: memory does not grow with the
    file's length. Errors raise :class:`AudioError` (possibly after some blocks were yielded, for damage found late).
    """
    if block_seconds <= 0:
        raise ValueError(f"block_seconds must be positive, got {block_seconds}")
    with _open(path) as f:
        orig_sr = f.samplerate
        if orig_sr == sample_rate:
            period, context = 1, 0
        else:
            period, context = _resample_context(orig_sr, sample_rate)
        block = max(context, period, round(block_seconds * orig_sr) // period * period)
        out_per_block = block * sample_rate // orig_sr  # exact: block is a multiple of period

        prev_tail = np.zeros(0, np.float32)  # last `context` samples of the block before `cur`
        cur = _read(f, path, block)
        total = cur.size
        while cur.size:
            nxt = _read(f, path, block) if cur.size == block else np.zeros(0, np.float32)
            total += nxt.size
            if context == 0:
                yield torch.from_numpy(cur)
            else:
                chunk = np.concatenate([prev_tail, cur, nxt[:context]])
                out = resample(torch.from_numpy(chunk), orig_sr, sample_rate)
                start = prev_tail.size * sample_rate // orig_sr
                stop = start + out_per_block if nxt.size else None  # last block: keep the tail
                yield out[start:stop].clone()
                prev_tail = cur[-context:]
            cur = nxt
        _check_length(path, f, total)


def crop_or_pad(wave: torch.Tensor | np.ndarray, length: int, start: int = 0, pad_before: int = 0
                ) -> torch.Tensor | np.ndarray:
    """Exactly ``length`` samples (last axis) of ``wave``, a tensor or a numpy array (memory-mapped ones are read
    only where cropped): when longer, the window from ``start`` (a view); when shorter, a new zero-filled array with
    the wave placed after ``pad_before`` zeros. The one crop/pad of byola; callers choose ``start`` and
    ``pad_before`` (their randomness stays theirs)."""
    n = wave.shape[-1]
    if n >= length:
        if not 0 <= start <= n - length:
            raise ValueError(f"crop start {start} outside [0, {n - length}] for {n} samples -> {length}")
        return wave[..., start:start + length]
    if not 0 <= pad_before <= length - n:
        raise ValueError(f"pad_before {pad_before} outside [0, {length - n}] for {n} samples -> {length}")
    if isinstance(wave, np.ndarray):
        out = np.zeros((*wave.shape[:-1], length), dtype=wave.dtype)
    else:
        out = wave.new_zeros((*wave.shape[:-1], length))
    out[..., pad_before:pad_before + n] = wave
    return out
