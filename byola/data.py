"""Pretraining corpora: scanning folders and file lists, and random fixed-length crops of raw audio.

Decoding and resampling happen in DataLoader workers (through :func:`byola.audio.load_audio`); everything after the
raw waveform (log-mel, normalization, augmentation) is batched on the device by the caller.
"""
from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from byola.audio import AUDIO_EXTENSIONS, AudioError, audio_duration, crop_or_pad, load_audio
from byola.errors import UsageError
from byola.files import atomic_writer, list_inputs

__all__ = ["scan_corpus", "probe_files", "RandomCropDataset", "PAD_MODES", "CACHE_DTYPES"]

# The values of RandomCropDataset's ``pad`` and ``cache_dtype``, stated once: the recipe's ``data`` section
# (byola.modalities.audio.AudioData) declares its fields as these Literals.
PAD_MODES = ("center", "end", "random")
CACHE_DTYPES = ("float32", "float16")

log = logging.getLogger(__name__)

PathLike = str | os.PathLike


def scan_corpus(sources: Iterable[PathLike] | PathLike, extensions: Sequence[str] = AUDIO_EXTENSIONS) -> list[str]:
    """Audio files of a corpus: absolute paths (links not resolved), one per real file, sorted.

    The sources are expanded by `byola.files.list_inputs` (the one input listing, shared with `byola embed`):
    folders (recursive, ``extensions``, case-insensitive), audio files, and ``.txt``/``.lst`` lists of files or
    folders (relative to the list's folder; blank lines and ``#`` comments ignored). Every path found is returned,
    including entries that cannot be read (broken links, missing listed files, non-regular files): unreadable files
    are the dataset's to report. A source that does not exist raises FileNotFoundError; a corpus with no file
    raises :class:`byola.errors.UsageError`.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    sources = list(sources)
    found = list_inputs(sources, tuple(e.lower() for e in extensions))
    if found.missing:
        raise FileNotFoundError(f"corpus source not found: {found.missing[0]}")
    files = found.all()
    if not files:
        raise UsageError(f"no audio files ({', '.join(extensions)}) found in {', '.join(map(os.fspath, sources))}")
    return files


def probe_files(files: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """Split ``files`` into readable ones and ``{path: reason}`` for those whose header cannot be read
    (:func:`byola.audio.audio_duration`, no decoding)."""
    good, bad = [], {}
    for f in files:
        try:
            audio_duration(f)
            good.append(f)
        except AudioError as e:
            bad[f] = e.reason
    return good, bad


def _report(bad: dict[str, str], when: str) -> None:
    lines = "\n".join(f"  {p}: {r}" for p, r in bad.items())
    log.warning("skipping %d unreadable audio file(s) (%s):\n%s", len(bad), when, lines)


class RandomCropDataset(Dataset):
    """Random crops of ``unit_sec`` seconds of raw mono audio at ``sample_rate``: item ``i`` is a float32 tensor
    ``[int(unit_sec * sample_rate)]`` cut from file ``i``.

    Longer files are cropped at an offset uniform over all positions; shorter ones are zero-padded (``pad="center"``:
    the padding is split evenly before and after, as BYOL-A's dataset does; ``"end"``: after; ``"random"``: a random
    split). The random draws come from ``numpy.random.default_rng([seed, epoch, i])`` (``set_epoch`` selects the
    epoch), so they do not depend on the worker that loads the item and are reproduced exactly on resume.

    Unreadable files never stop training. With ``probe=True`` every header is read once at construction and files
    that fail are dropped with one warning (their reasons in ``self.unreadable``). A file that fails later, while
    being decoded, is reported once (across all DataLoader workers: the flags live in shared memory) and its item is
    replaced by the next readable file's crop (a deterministic substitute).

    ``cache_dir``: decoded, resampled audio is kept as one ``.npy`` per file (``cache_dtype`` float32 = bit-exact,
    float16 = half the disk) keyed by path, size, mtime and sample rate; later reads memory-map the file and read only
    the crop.
    """

    def __init__(self, files: Sequence[PathLike], unit_sec: float = 0.95, sample_rate: int = 16000, seed: int = 0,
                 pad: str = "center", probe: bool = True, cache_dir: PathLike | None = None,
                 cache_dtype: str = "float32") -> None:
        if unit_sec <= 0:
            raise ValueError(f"unit_sec must be > 0, got {unit_sec}")
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {', '.join(map(repr, PAD_MODES))}, got {pad!r}")
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {', '.join(map(repr, CACHE_DTYPES))}, got {cache_dtype!r}")
        files = [os.fspath(f) for f in files]
        self.unreadable: dict[str, str] = {}
        if probe:
            files, self.unreadable = probe_files(files)
            if self.unreadable:
                _report(self.unreadable, "header check")
        if not files:
            raise ValueError("no readable audio file in the corpus")
        self.files = files
        self.unit_sec, self.sample_rate, self.seed, self.pad = float(unit_sec), int(sample_rate), int(seed), pad
        self.unit_samples = int(unit_sec * sample_rate)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_dtype = cache_dtype
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.epoch = 0
        # 1 = failed to decode and already reported; shared with DataLoader workers (fork or spawn).
        self._failed = torch.zeros(len(files), dtype=torch.uint8).share_memory_()

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose crops ``__getitem__`` returns."""
        self.epoch = int(epoch)

    @property
    def failed_files(self) -> list[str]:
        """Files that failed while being decoded (after the header check)."""
        return [self.files[i] for i in torch.nonzero(self._failed).flatten().tolist()]

    def _cache_path(self, path: str) -> Path:
        st = os.stat(path)
        key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{self.sample_rate}|{self.cache_dtype}"
        return self.cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.npy"  # type: ignore[operator]

    def _wave(self, path: str) -> np.ndarray:
        """The whole decoded file, possibly memory-mapped from the cache."""
        if self.cache_dir is None:
            return load_audio(path, self.sample_rate).numpy()
        cached = self._cache_path(path)
        if cached.exists():
            return np.load(cached, mmap_mode="r")
        wave = load_audio(path, self.sample_rate).numpy().astype(self.cache_dtype)
        with atomic_writer(cached, "wb") as f:
            np.save(f, wave)
        return wave

    def _crop(self, wave: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        n, unit = len(wave), self.unit_samples
        if n >= unit:
            cut = crop_or_pad(wave, unit, start=int(rng.integers(0, n - unit + 1)))
        else:
            gap = unit - n
            before = {"center": gap // 2, "end": 0, "random": int(rng.integers(0, gap + 1))}[self.pad]
            cut = crop_or_pad(wave, unit, pad_before=before)
        return torch.from_numpy(np.array(cut, dtype=np.float32))  # a copy: reads only the crop of a memory map

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        n = len(self.files)
        for k in range(n):
            i = (index + k) % n
            if self._failed[i]:
                continue
            try:
                return self._crop(self._wave(self.files[i]), rng)
            except AudioError as e:
                if not self._failed[i]:
                    self._failed[i] = 1
                    log.warning("skipping unreadable audio file %s: %s (its items are replaced by other files)",
                                e.path, e.reason)
        raise RuntimeError(f"none of the {n} corpus files could be decoded")
