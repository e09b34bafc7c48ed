"""The embedding model: `Embedder` (frontend + pre-normalization + encoder) and `load`.

The resumable files → embeddings job (`embed_files`, `collect_inputs`, `read_embeddings`) lives in
`byola.embed_job`; its names are re-exported here.

Long inputs are processed in chunks with enough context on both sides that the result equals whole-input
processing (up to float rounding): the log-mel with `LogMelSpectrogram.stream`, and the encoder on log-mel chunks
padded with `_ENCODER_CONTEXT` frames, so memory stays bounded whatever the file length. Clip embeddings pool frame
embeddings exactly as the encoder does (max over time + mean over time), with running max and sum.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .audio import resample
from .checkpoint import CheckpointError, load_any
from .decoded import DecodedWaves
from .errors import UsageError
from .files import file_sha256
from .frontend import DEFAULT_BACKEND, LogMelSpectrogram
from .models import build_encoder, optimize_for_inference
from .norm import NormStats, PreNormalization, compute_norm_stats
from .precision import autocast, precision_name, resolve_precision
from .runtime import freed_memory_returned

# Log-mel frames computed per encoder chunk (20 s of audio at hop 160). A multiple of every encoder's frame_hop.
CHUNK_FRAMES = 2000
# Encoder context on each side of a chunk, in log-mel frames: more than the receptive field of AudioNTT2020/2022
# (22 frames), and a multiple of 8 so chunk borders stay on the output-frame grid.
_ENCODER_CONTEXT = 64


class Embedder(nn.Module):
    """A frozen BYOL-A model: waveform (16 kHz) → log-mel → pre-normalization → encoder.

    Args:
        encoder: an audio encoder from `byola.models` (eval mode is enforced).
        frontend: the log-mel frontend the encoder was trained with.
        norm_stats: pre-normalization statistics; None leaves them to be set with `set_norm_stats` (e.g. computed
            from the inputs with `fit_norm_stats`) before embedding.
        optimize: fold batch norm into the convolutions and use channels-last memory (`optimize_for_inference`).
        compile: also `torch.compile` the encoder (with `optimize`): faster once compiled, but each new input
            shape compiles first (seconds), so it pays off on long jobs of equal-length clips.
        micro_batch: with `optimize`, run batches through frontend and encoder in chunks of this many clips: the
            intermediate tensors of a small chunk stay in the CPU caches (encoder measured at 5.1x plain eager at
            16 against 2.6x unchunked, batch 256, 2 cores; benchmarks/embed_speed.py). None runs whole batches.
        compute_dtype: the encoder's compute dtype: float32 (exact), or bfloat16 under autocast (see
            byola.precision; the log-mel frontend and normalization stay float32, embeddings are returned float32).
    """

    def __init__(self, encoder: nn.Module, frontend: LogMelSpectrogram, norm_stats: NormStats | None,
                 optimize: bool = True, compile: bool = False, micro_batch: int | None = 16,
                 compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.compute_dtype = compute_dtype
        self.encoder = (optimize_for_inference(encoder, micro_batch=micro_batch, compile=compile) if optimize
                        else encoder.eval())
        self.inference = {"optimize": bool(optimize), "compile": bool(compile and optimize)}
        self.frontend = frontend
        self.norm_stats = norm_stats
        self.norm_stats_source = "given" if norm_stats else ""
        self.prenorm = PreNormalization(norm_stats.mean, norm_stats.std) if norm_stats else None
        self.eval()

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    @property
    def frame_hop_ms(self) -> float:
        """Milliseconds between consecutive frame embeddings."""
        return 1000.0 * self.frontend.hop_length * self.encoder.frame_hop / self.sample_rate

    def set_norm_stats(self, stats: NormStats, source: str = "given") -> None:
        """Pre-normalize with ``stats`` from now on; ``source`` says where they came from (recorded in an embed
        job's state, e.g. "checkpoint", "computed from 12 inputs")."""
        self.norm_stats, self.norm_stats_source = stats, source
        self.prenorm = PreNormalization(stats.mean, stats.std).to(self.device)

    def settings(self) -> dict:
        """Everything that changes this embedder's numbers (json-able): the checkpoint, the frontend, the
        normalization statistics, the chunking of long inputs and the inference path. Outputs made with different
        settings must not be mixed."""
        ns = self.norm_stats
        settings = {"checkpoint_id": getattr(self, "checkpoint_id", None), "encoder": self.encoder.config(),
                    "frontend": self.frontend.config(), "sample_rate": self.sample_rate,
                    "norm_stats": {"mean": float(ns.mean), "std": float(ns.std)} if ns else None,
                    "chunk_frames": CHUNK_FRAMES, "encoder_context": _ENCODER_CONTEXT, "inference": self.inference}
        if self.compute_dtype != torch.float32:  # fp32 keeps the settings (and outputs) of earlier versions valid
            settings["precision"] = precision_name(self.compute_dtype)
        return settings

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def _normalized_logmel(self, waves: torch.Tensor) -> torch.Tensor:
        if self.prenorm is None:
            raise RuntimeError("normalization statistics are not set: the checkpoint has none; pass norm_stats or "
                               "call fit_norm_stats(...) first")
        return self.prenorm(self.frontend(waves.to(self.device, torch.float32)))

    def _micro_batches(self, waves: torch.Tensor, model: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """`model` on the normalized log-mel of `waves`, in the encoder's micro-batches (frontend included)."""
        size = self.encoder.micro_batch
        chunks = waves.split(size) if size else [waves]
        return torch.cat([self._encode(model, self._normalized_logmel(chunk).unsqueeze(1)) for chunk in chunks])

    def _encode(self, model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """`model(x)` at `compute_dtype`, returned as float32."""
        with autocast(self.compute_dtype, x.device):
            return model(x).float()

    @torch.inference_mode()
    def embed_batch(self, waves: torch.Tensor) -> torch.Tensor:
        """Clip embeddings [B, D] of equal-length waveforms [B, T] at `sample_rate`."""
        return self._micro_batches(waves, self.encoder)

    @torch.inference_mode()
    def embed_frames_batch(self, waves: torch.Tensor) -> torch.Tensor:
        """Frame embeddings [B, T', D] of equal-length waveforms [B, T]."""
        return self._micro_batches(waves, self.encoder.frame_embeddings)

    @torch.inference_mode()
    def embed(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> torch.Tensor:
        """Clip embedding [D] of one mono waveform of any length and sample rate."""
        wave = resample(torch.as_tensor(waveform, dtype=torch.float32), sample_rate, self.sample_rate)
        frames = self._stream_frame_embeddings([wave])
        return pool_frames(frames)

    @torch.inference_mode()
    def embed_frames(self, waveform: torch.Tensor | np.ndarray, sample_rate: int,
                     hop_ms: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame embeddings [T', D] and their centre timestamps in milliseconds [T'] for one waveform, at the
        model's `frame_hop_ms` or at `hop_ms` (a multiple of it: see `frames_at_hop`)."""
        wave = resample(torch.as_tensor(waveform, dtype=torch.float32), sample_rate, self.sample_rate)
        return self.frames_at_hop(torch.cat(list(self._stream_frame_embeddings([wave]))), hop_ms)

    def frame_timestamps_ms(self, n_frames: int) -> torch.Tensor:
        """Centre time of each frame embedding, in ms: output frame k covers log-mel frames [k·h, (k+1)·h)."""
        return self._frame_centres_ms(n_frames).float()

    def _frame_centres_ms(self, n_frames: int) -> torch.Tensor:
        hop = self.encoder.frame_hop
        centre_frames = torch.arange(n_frames, dtype=torch.float64) * hop + (hop - 1) / 2
        return centre_frames * 1000.0 * self.frontend.hop_length / self.sample_rate

    def frames_per_hop(self, hop_ms: float | None) -> int:
        """How many of the model's frames (`frame_hop_ms` apart) one frame at `hop_ms` pools (1 for None). Raises
        `UsageError` unless `hop_ms` is a positive multiple of `frame_hop_ms`."""
        if hop_ms is None:
            return 1
        ratio = float(hop_ms) / self.frame_hop_ms
        if not (round(ratio) >= 1 and math.isclose(ratio, round(ratio), rel_tol=1e-9)):
            native = self.frame_hop_ms
            raise UsageError(f"frame hop {hop_ms:g} ms is not a multiple of this model's frame hop {native:g} ms",
                             f"use {native:g}, {2 * native:g}, {3 * native:g}, ... ms")
        return round(ratio)

    def frames_at_hop(self, frames: torch.Tensor, hop_ms: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame embeddings [T, D] at the model's hop → (embeddings [T', D], centre timestamps in ms [T']) at
        `hop_ms`: each output frame is the mean of `frames_per_hop(hop_ms)` consecutive frames (mean pooling, as
        BYOL-A's clip embedding averages frames over time; a last, shorter group averages what is left, so the
        whole input is covered) and its timestamp the mean of their centres."""
        size = self.frames_per_hop(hop_ms)
        times = _mean_groups(self._frame_centres_ms(len(frames))[:, None], size)[:, 0]
        return _mean_groups(frames, size), times.float()

    def embed_files(self, paths: Sequence[str | os.PathLike], out: str | os.PathLike, **kwargs) -> "EmbedSummary":
        """Embed audio files into `out` (see `byola.embed_job.embed_files`)."""
        from .embed_job import embed_files

        return embed_files(self, paths, out, **kwargs)

    def fit_norm_stats(self, paths: Sequence[str | os.PathLike], keep: DecodedWaves | None = None,
                       progress: bool = True, num_workers: int = 0) -> NormStats:
        """Compute exact pre-normalization statistics from `paths` (skipping unreadable files) and use them.

        `keep` receives the decoded waveforms; pass it to `embed_files(..., decoded=keep)` to decode each file once.
        `num_workers` > 0 decodes in that many one-thread processes (`compute_norm_stats`; same statistics).
        The pass returns freed memory to the OS (`byola.runtime.freed_memory_returned`), so the kept waveforms do
        not pin a heap grown by each batch's temporaries.
        """
        with freed_memory_returned():
            stats = compute_norm_stats(paths, self.frontend, sample_rate=self.sample_rate, skip_errors=True,
                                       on_decoded=keep.put if keep is not None else None, progress=progress,
                                       num_workers=num_workers)
        self.set_norm_stats(stats, source=f"computed from {len(paths)} inputs")
        return stats

    # -- chunked processing ------------------------------------------------------------------------------------
    def _stream_frame_embeddings(self, blocks: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Frame embeddings [t, D] of a waveform given as blocks, chunk by chunk, equal to whole-input encoding."""
        hop, ctx = self.encoder.frame_hop, _ENCODER_CONTEXT
        pending = torch.zeros(self.frontend.n_mels, 0, device=self.device)
        emitted_in = 0  # log-mel frames already turned into output frames (a multiple of hop)
        pending_start = 0  # log-mel frame index of pending[:, 0]

        def run(lo: int, hi: int, keep_lo: int, keep_hi: int) -> torch.Tensor:
            x = self.prenorm(pending[:, lo - pending_start: hi - pending_start])
            out = self._encode(self.encoder.frame_embeddings, x[None, None])[0]
            return out[(keep_lo - lo) // hop: (keep_hi - lo) // hop]

        if self.prenorm is None:
            self._normalized_logmel(torch.zeros(1, 1))  # raises the missing-statistics error
        for mel in self.frontend.stream((b.to(self.device) for b in blocks), CHUNK_FRAMES):
            pending = torch.cat([pending, mel], dim=1)
            end = pending_start + pending.shape[1]
            # Output frames whose receptive field (plus context) lies inside what we have.
            ready = ((end - ctx) // hop) * hop
            if ready - emitted_in >= CHUNK_FRAMES:
                lo = max(emitted_in - ctx, 0)
                yield run(lo, ready + ctx, emitted_in, ready)
                emitted_in = ready
                drop = max(emitted_in - ctx, 0) - pending_start
                pending, pending_start = pending[:, drop:], pending_start + drop
        end = pending_start + pending.shape[1]
        final = (end // hop) * hop
        if final > emitted_in:
            lo = max(emitted_in - ctx, 0)
            yield run(lo, end, emitted_in, final)


def _mean_groups(x: torch.Tensor, size: int) -> torch.Tensor:
    """Means of consecutive groups of `size` rows of `x` [T, D] (the last group may be shorter): [ceil(T/size), D]."""
    if size == 1:
        return x
    full = len(x) // size * size
    groups = [x[:full].unflatten(0, (-1, size)).mean(dim=1)]
    if full < len(x):
        groups.append(x[full:].mean(dim=0, keepdim=True))
    return torch.cat(groups)


def pool_frames(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """BYOL-A's clip pooling (max over time + mean over time) of frame embeddings given in chunks [t, D]."""
    running_max, total, count = None, None, 0
    for chunk in chunks:
        cmax, csum = chunk.max(dim=0).values, chunk.sum(dim=0, dtype=torch.float64)
        running_max = cmax if running_max is None else torch.maximum(running_max, cmax)
        total = csum if total is None else total + csum
        count += len(chunk)
    if count == 0:
        raise ValueError("audio too short to produce a single frame embedding")
    return running_max + (total / count).to(running_max.dtype)


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
         norm_stats: NormStats | tuple[float, float] | None = None, optimize: bool = True,
         frontend_backend: str | None = DEFAULT_BACKEND, random_init: int | None = None,
         compile: bool = False, accept_license: bool = False, precision: str = "fp32") -> Embedder:
    """Load a model as an `Embedder`: a model name from `byola.hub` (default: the model shipped in `pretrained/`;
    official weights are downloaded once, which needs `accept_license=True` the first time), a byola
    `.safetensors` checkpoint or an official BYOL-A `.pth` file (converted in memory).

    `norm_stats` overrides the checkpoint's statistics; a checkpoint without statistics (a converted official file)
    needs them here or from `Embedder.fit_norm_stats`. `frontend_backend` picks the log-mel backend; None keeps the
    one the checkpoint was trained with. The default (`byola.frontend.DEFAULT_BACKEND`, torchaudio) computes the same
    log-mel as nnAudio and librosa with an FFT, faster than nnAudio's convolution STFT on a CPU (tolerance and speed:
    README, "Embedding audio"), and runs on any device, unlike librosa.
    `random_init=SEED` replaces the weights with a random initialization of the same architecture (seeded): the
    baseline a trained model must beat.
    `precision`: "fp32" (default, exact), "bf16" (encoder under bf16 autocast) or "auto" (bf16 only where `device`
    has native bf16); see byola.precision.
    """
    from .hub import model_name, resolve

    ref, path = path, resolve(path, accept_license=accept_license)
    encoder, meta = load_any(path)
    if random_init is not None:
        torch.manual_seed(random_init)
        encoder = build_encoder(meta["encoder"]["name"], **meta["encoder"]["params"]).eval()
    frontend_config = dict(meta["frontend"])
    if meta["modality"] != "audio":
        raise CheckpointError(path, f"an {meta['modality']} model, not an audio one: give an audio model "
                                    "(`byola models` lists them)")
    if frontend_backend is not None:
        frontend_config["backend"] = frontend_backend
    frontend = LogMelSpectrogram(**frontend_config)
    if isinstance(norm_stats, tuple):
        norm_stats = NormStats(mean=float(norm_stats[0]), std=float(norm_stats[1]), count=0)
    source = "given" if norm_stats is not None else ""
    if norm_stats is None and meta.get("norm_stats"):
        norm_stats, source = NormStats.from_dict(meta["norm_stats"]), "checkpoint"
    embedder = Embedder(encoder, frontend, norm_stats, optimize=optimize, compile=compile,
                        compute_dtype=resolve_precision(precision, device)).to(device)
    embedder.norm_stats_source = source
    embedder.checkpoint_path = str(path)
    embedder.model_name = model_name(ref)
    if random_init is None:
        embedder.checkpoint_id = f"sha256:{file_sha256(path)}"
    else:  # caches keyed by this id must not mix random encoders of different architectures or frontends
        arch = json.dumps({"encoder": meta["encoder"], "frontend": frontend_config}, sort_keys=True)
        embedder.checkpoint_id = f"random-init:{random_init}:{hashlib.sha256(arch.encode()).hexdigest()[:12]}"
    return embedder


_JOB_NAMES = ("embed_files", "collect_inputs", "read_embeddings", "EmbedSummary", "EmbedOutput", "EmbedJobError",
              "IncompleteOutput", "INDEX_COLUMNS")
if TYPE_CHECKING:
    from .embed_job import (INDEX_COLUMNS, EmbedJobError, EmbedOutput, EmbedSummary, IncompleteOutput,  # noqa: F401
                            collect_inputs, embed_files, read_embeddings)


def __getattr__(name: str):
    """The job's names (`byola.embed_job`), imported on first use: the job module builds on this one."""
    if name in _JOB_NAMES:
        from . import embed_job

        return getattr(embed_job, name)
    raise AttributeError(f"module 'byola.embed' has no attribute {name!r}")
