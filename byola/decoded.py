"""Decoded waveforms kept between two passes over the same files, so each file is decoded once.

`byola embed` with a checkpoint that has no normalization statistics reads its inputs twice: once for the
statistics, once to embed. The first pass puts each decoded (mono, resampled) waveform here; the second takes it
back instead of decoding the file again. Memory stays bounded: beyond `max_bytes` waveforms go to .npy files in a
temporary folder (removed on `close`). The waveforms come back bit for bit, so the embeddings equal those of two
decoding passes.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

DEFAULT_MAX_BYTES = 512 * 2**20  # in memory; e.g. all of a 2,706-clip 1-s corpus (173 MB) stays in memory


class DecodedWaves:
    """Waveforms by file path: in memory up to `max_bytes`, the rest spilled to `spill_dir` (a new temporary
    folder by default). Use as a context manager, or call `close`, to remove the spilled files."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, spill_dir: str | os.PathLike | None = None) -> None:
        self.max_bytes = max_bytes
        self._spill_parent = spill_dir
        self._spill: Path | None = None
        self._memory: dict[str, torch.Tensor] = {}
        self._on_disk: dict[str, Path] = {}
        self.memory_bytes = 0

    @staticmethod
    def _key(path: str | os.PathLike) -> str:
        return str(Path(path).resolve())

    def put(self, path: str | os.PathLike, wave: torch.Tensor) -> None:
        """Keep `wave` (1-D float32) as the decoded content of `path`."""
        key, size = self._key(path), wave.numel() * wave.element_size()
        if self.memory_bytes + size <= self.max_bytes:
            self._memory[key] = wave
            self.memory_bytes += size
            return
        if self._spill is None:
            self._spill = Path(tempfile.mkdtemp(prefix="byola_decoded_", dir=self._spill_parent))
        file = self._spill / f"{len(self._on_disk):08d}.npy"
        np.save(file, wave.numpy())
        self._on_disk[key] = file

    def get(self, path: str | os.PathLike) -> torch.Tensor | None:
        """The kept waveform of `path`, or None when it was not kept."""
        key = self._key(path)
        if key in self._memory:
            return self._memory[key]
        if key in self._on_disk:
            return torch.from_numpy(np.load(self._on_disk[key]))
        return None

    def __len__(self) -> int:
        return len(self._memory) + len(self._on_disk)

    @property
    def spilled(self) -> int:
        """How many waveforms are on disk."""
        return len(self._on_disk)

    def close(self) -> None:
        """Forget everything and remove the spilled files."""
        self._memory.clear()
        self._on_disk.clear()
        self.memory_bytes = 0
        if self._spill is not None:
            shutil.rmtree(self._spill, ignore_errors=True)
            self._spill = None

    def __enter__(self) -> DecodedWaves:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
