"""Files → embeddings: the `Embedder` (frontend + pre-normalization + encoder) and the resumable `embed_files` job.

Long inputs are processed in chunks with enough context on both sides that the result equals whole-input
processing (up to float rounding): the log-mel with `LogMelSpectrogram.stream`, and the encoder on log-mel chunks
padded with `_ENCODER_CONTEXT` frames, so memory stays bounded whatever the file length. Clip embeddings pool frame
embeddings exactly as the encoder does (max over time + mean over time), with running max and sum.
"""
from __future__ import annotations

import csv
import hashlib
import importlib.resources
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .audio import AUDIO_EXTENSIONS, AudioError, audio_duration, load_audio_if_shorter, resample, stream_audio
from .checkpoint import file_sha256, load_checkpoint
from .decoded import DecodedWaves
from .frontend import LogMelSpectrogram
from .models import build_encoder, optimize_for_inference
from .norm import NormStats, PreNormalization, compute_norm_stats
from .precision import autocast, precision_name, resolve_precision

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
        self.frontend = frontend
        self.norm_stats = norm_stats
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

    def set_norm_stats(self, stats: NormStats) -> None:
        self.norm_stats = stats
        self.prenorm = PreNormalization(stats.mean, stats.std).to(self.device)

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
    def embed_frames(self, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Frame embeddings [T', D] and their centre timestamps in milliseconds [T'] for one waveform."""
        wave = resample(torch.as_tensor(waveform, dtype=torch.float32), sample_rate, self.sample_rate)
        emb = torch.cat(list(self._stream_frame_embeddings([wave])))
        return emb, self.frame_timestamps_ms(len(emb))

    def frame_timestamps_ms(self, n_frames: int) -> torch.Tensor:
        """Centre time of each frame embedding, in ms: output frame k covers log-mel frames [k·h, (k+1)·h)."""
        hop = self.encoder.frame_hop
        centre_frames = torch.arange(n_frames, dtype=torch.float64) * hop + (hop - 1) / 2
        return (centre_frames * 1000.0 * self.frontend.hop_length / self.sample_rate).float()

    def embed_files(self, paths: Sequence[str | os.PathLike], out: str | os.PathLike, **kwargs) -> "EmbedSummary":
        """Embed audio files into `out` (see `embed_files`)."""
        return embed_files(self, paths, out, **kwargs)

    def fit_norm_stats(self, paths: Sequence[str | os.PathLike], keep: DecodedWaves | None = None) -> NormStats:
        """Compute exact pre-normalization statistics from `paths` (skipping unreadable files) and use them.

        `keep` receives the decoded waveforms; pass it to `embed_files(..., decoded=keep)` to decode each file once.
        """
        stats = compute_norm_stats(paths, self.frontend, sample_rate=self.sample_rate, skip_errors=True,
                                   on_decoded=keep.put if keep is not None else None)
        self.set_norm_stats(stats)
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
         frontend_backend: str | None = "torchaudio", random_init: int | None = None,
         compile: bool = False, precision: str = "fp32") -> Embedder:
    """Load a byola checkpoint (default: the model shipped in `pretrained/`) as an `Embedder`.

    `norm_stats` overrides the checkpoint's statistics; a checkpoint without statistics (a converted official file)
    needs them here or from `Embedder.fit_norm_stats`. `frontend_backend` picks the log-mel backend; None keeps the
    one the checkpoint was trained with. The default, torchaudio, computes the same log-mel as nnAudio and librosa
    (within 4e-4 nats on real clips, see tests/test_frontend.py) with an FFT, about 3x faster than nnAudio's
    convolution STFT on a CPU, and runs on any device, unlike librosa.
    `random_init=SEED` replaces the weights with a random initialization of the same architecture (seeded): the
    baseline a trained model must beat.
    `precision`: "fp32" (default, exact), "bf16" (encoder under bf16 autocast) or "auto" (bf16 only where `device`
    has native bf16); see byola.precision.
    """
    path = Path(path) if path is not None else default_checkpoint()
    encoder, meta = load_checkpoint(path)
    if random_init is not None:
        torch.manual_seed(random_init)
        encoder = build_encoder(meta["encoder"]["name"], **meta["encoder"]["params"]).eval()
    frontend_config = dict(meta["frontend"])
    if frontend_config.get("modality", "audio") != "audio":
        raise ValueError(f"{path} is a {frontend_config['modality']} model: byola embed takes audio models")
    if frontend_backend is not None:
        frontend_config["backend"] = frontend_backend
    frontend = LogMelSpectrogram(**frontend_config)
    if isinstance(norm_stats, tuple):
        norm_stats = NormStats(mean=float(norm_stats[0]), std=float(norm_stats[1]), count=0)
    if norm_stats is None and meta.get("norm_stats"):
        norm_stats = NormStats.from_dict(meta["norm_stats"])
    embedder = Embedder(encoder, frontend, norm_stats, optimize=optimize, compile=compile,
                        compute_dtype=resolve_precision(precision, device)).to(device)
    embedder.checkpoint_path = str(path)
    if random_init is None:
        embedder.checkpoint_id = f"sha256:{file_sha256(path)}"
    else:  # caches keyed by this id must not mix random encoders of different architectures or frontends
        arch = json.dumps({"encoder": meta["encoder"], "frontend": frontend_config}, sort_keys=True)
        embedder.checkpoint_id = f"random-init:{random_init}:{hashlib.sha256(arch.encode()).hexdigest()[:12]}"
    return embedder


def default_checkpoint() -> Path:
    """The model shipped in the repository's `pretrained/` folder (installed as the package `byola.pretrained`)."""
    folder = Path(str(importlib.resources.files("byola.pretrained")))
    found = sorted(folder.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"no default model in {folder}: pass a checkpoint explicitly")
    return found[0]


# -- inputs ----------------------------------------------------------------------------------------------------
def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Expand files, folders (recursive, audio extensions) and text files listing paths into a sorted unique list.

    A text file is any input whose extension is `.txt` or `.lst`; relative paths in it are relative to it.
    Missing inputs raise `FileNotFoundError`.
    """
    found: dict[str, Path] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for p in path.rglob("*"):
                if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file():
                    found[str(p.resolve())] = p.resolve()
        elif path.suffix.lower() in (".txt", ".lst") and path.is_file():
            for line in path.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line) if Path(line).is_absolute() else path.parent / line
                    found[str(p.resolve())] = p.resolve()
        elif path.exists():
            found[str(path.resolve())] = path.resolve()
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return [found[k] for k in sorted(found)]


# -- the embed job -----------------------------------------------------------------------------------------------
INDEX_COLUMNS = ["file", "row", "status", "error", "duration_s"]
_STATE_DIR = ".byola_embed"
_CPU_WORKER_CHUNK = 32


@dataclass
class EmbedSummary:
    ok: int
    failed: int
    skipped: int
    out: Path


class _Shards:
    """Finished work kept as atomic shard files under OUTDIR/.byola_embed, so an interrupted run loses nothing."""

    def __init__(self, out: Path, fingerprint: dict) -> None:
        self.dir = out / _STATE_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        meta = self.dir / "settings.json"
        if meta.exists():
            previous = json.loads(meta.read_text())
            if previous != fingerprint:
                raise ValueError(f"{out} holds embeddings made with other settings ({previous}); "
                                 "choose another --out or delete it")
        else:
            _atomic_write_text(meta, json.dumps(fingerprint, sort_keys=True))
        self.records: dict[str, dict] = {}
        self.embeddings: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("shard_*.npz")):
            with np.load(shard, allow_pickle=False) as data:
                records = json.loads(str(data["records"]))
                for k, rec in enumerate(records):
                    self.records[rec["file"]] = rec
                    if rec["status"] == "ok":
                        self.embeddings[rec["file"]] = data["embeddings"][rec["shard_row"]]
        self._next = len(list(self.dir.glob("shard_*.npz")))

    def done(self, file: str) -> bool:
        return self.records.get(file, {}).get("status") == "ok"

    def write(self, records: list[dict], embeddings: list[np.ndarray], dim: int) -> None:
        rows = 0
        for rec in records:
            if rec["status"] == "ok":
                rec["shard_row"] = rows
                rows += 1
        stacked = np.stack(embeddings).astype(np.float32) if embeddings else np.zeros((0, dim), np.float32)
        path = self.dir / f"shard_{self._next:07d}.npz"
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, embeddings=stacked, records=np.array(json.dumps(records)))
        os.replace(tmp, path)
        self._next += 1
        for rec in records:
            self.records[rec["file"]] = rec
        ok = [r for r in records if r["status"] == "ok"]
        for rec, emb in zip(ok, embeddings):
            self.embeddings[rec["file"]] = emb

    def finalize(self, out: Path, files: list[str], dim: int) -> tuple[int, int]:
        """Write embeddings.npy and index.csv (atomically) in the order of `files`."""
        ok_files = [f for f in files if self.done(f)]
        matrix = np.stack([self.embeddings[f] for f in ok_files]).astype(np.float32) if ok_files \
            else np.zeros((0, dim), np.float32)
        tmp = out / "embeddings.tmp.npy"
        np.save(tmp, matrix)
        os.replace(tmp, out / "embeddings.npy")
        row_of = {f: i for i, f in enumerate(ok_files)}
        with_frames = any(self.records[f].get("frames") for f in files)
        tmp_csv = out / "index.tmp.csv"
        with open(tmp_csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=INDEX_COLUMNS + (["frames"] if with_frames else []))
            writer.writeheader()
            for file in files:
                rec = self.records[file]
                row = {"file": file, "row": row_of.get(file, ""), "status": rec["status"],
                       "error": rec.get("error", ""), "duration_s": rec.get("duration_s", "")}
                if with_frames:
                    row["frames"] = rec.get("frames", "")
                writer.writerow(row)
        os.replace(tmp_csv, out / "index.csv")
        return len(ok_files), len(files) - len(ok_files)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class _Item:
    """One input file's way through `embed_files`: decoded (`wave`), embedded (`clip`, `frames`), failed (`error`) or
    to be read from disk in blocks (`stream`, for files longer than `max_load_sec`)."""

    file: str
    wave: torch.Tensor | None = None
    clip: torch.Tensor | None = None
    frames: torch.Tensor | None = None
    error: str = ""
    stream: bool = False
    duration_s: float = 0.0


def _failure(file: str, err: Exception) -> str:
    return str(err) if isinstance(err, AudioError) else f"{file}: {type(err).__name__}: {err}"


def _embed_items(embedder: "Embedder", items: list[_Item], frames: bool) -> None:
    """Embed the decoded (or to be streamed) items in place.

    Clips of up to `CHUNK_FRAMES` log-mel frames run in batches of equal length (a file's embedding never depends
    on its neighbours: nothing is padded); longer ones run alone in chunks, so memory stays bounded. A batch the
    model rejects (e.g. clips shorter than its minimum) fails per file.
    """
    groups: dict[int, list[_Item]] = {}
    for item in items:
        if item.stream:
            _embed_in_chunks(embedder, item, stream_audio(item.file, embedder.sample_rate), frames)
        elif item.wave is not None and embedder.frontend.n_frames(len(item.wave)) > CHUNK_FRAMES:
            _embed_in_chunks(embedder, item, [item.wave], frames)
        elif item.wave is not None:
            groups.setdefault(len(item.wave), []).append(item)
    for group in groups.values():
        waves = torch.stack([item.wave for item in group])
        try:
            if frames:
                frame_emb = embedder.embed_frames_batch(waves)
                clips = frame_emb.max(dim=1).values + frame_emb.mean(dim=1)
            else:
                frame_emb, clips = None, embedder.embed_batch(waves)
        except Exception as err:  # noqa: BLE001 -- reported per file, the run goes on
            for item in group:
                item.error, item.wave = _failure(item.file, err), None
            continue
        for k, item in enumerate(group):
            item.wave, item.clip = None, clips[k].float().cpu()
            item.frames = None if frame_emb is None else frame_emb[k].float().cpu()


def _embed_in_chunks(embedder: "Embedder", item: _Item, blocks: Iterable[torch.Tensor], frames: bool) -> None:
    """Embed one long input given as waveform blocks, chunk by chunk (`Embedder._stream_frame_embeddings`)."""
    try:
        chunks = embedder._stream_frame_embeddings(blocks)
        if frames:  # frame embeddings are kept whole; clip embeddings pool on the fly
            item.frames = torch.cat(list(chunks)).float().cpu()
            item.clip = pool_frames([item.frames])
        else:
            item.clip = pool_frames(chunks).float().cpu()
        if item.stream:
            item.duration_s = audio_duration(item.file)
    except Exception as err:  # noqa: BLE001 -- reported per file, the run goes on
        item.error = _failure(item.file, err)
    item.wave, item.stream = None, False


class _Chunks(torch.utils.data.Dataset):
    """Item k = files [k·size, (k+1)·size): decoded and resampled, and, when given an `embedder`, also embedded.

    In DataLoader workers this puts whole files' work in parallel processes (one torch thread each).
    """

    def __init__(self, files: list[str], size: int, sample_rate: int, max_load_sec: float,
                 embedder: "Embedder | None", frames: bool, decoded: DecodedWaves | None = None) -> None:
        self.files, self.size, self.sample_rate, self.max_load_sec = files, size, sample_rate, max_load_sec
        self.embedder, self.frames, self.decoded = embedder, frames, decoded

    def _decode(self, file: str) -> torch.Tensor | None:
        """The waveform (kept from an earlier pass when `decoded` has it), or None for files to stream."""
        kept = self.decoded.get(file) if self.decoded is not None else None
        if kept is not None and len(kept) <= self.max_load_sec * self.sample_rate:
            return kept
        return load_audio_if_shorter(file, self.max_load_sec, self.sample_rate)

    def __len__(self) -> int:
        return -(-len(self.files) // self.size)

    def __getitem__(self, k: int) -> list[_Item]:
        items = []
        for i in range(k * self.size, min((k + 1) * self.size, len(self.files))):
            file = self.files[i]
            item = _Item(file)
            try:
                item.wave = self._decode(file)
                if item.wave is None:
                    item.stream = True
                else:
                    item.duration_s = len(item.wave) / self.sample_rate
            except Exception as err:  # noqa: BLE001 -- an unexpected decoder failure is reported per file too
                item.error = _failure(file, err)
            items.append(item)
        if self.embedder is not None:
            _embed_items(self.embedder, items, self.frames)
        return items


def _chunk_size(batch_size: int, in_workers: bool) -> int:
    return min(batch_size, _CPU_WORKER_CHUNK) if in_workers else batch_size


def default_num_workers(n_files: int, batch_size: int, on_cpu: bool) -> int:
    """Worker processes for `embed_files` on `n_files` files: none when they fit in one chunk (a handful of files
    is embedded in this process, without paying for workers to start), else one per CPU core on a CPU model (at
    most one per chunk; each runs the model on one thread), 2 decoding for an accelerator."""
    n_chunks = -(-n_files // _chunk_size(batch_size, on_cpu))
    if n_chunks <= 1:
        return 0
    return min(len(os.sched_getaffinity(0)), n_chunks) if on_cpu else 2


def _unbatched(item: list[_Item]) -> list[_Item]:
    """DataLoader collate function: a chunk is already a list."""
    return item


def embed_files(embedder: Embedder, paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                batch_size: int = 64, frames: bool = False, num_workers: int | None = None,
                max_load_sec: float = 60.0, progress: bool = True, flush_every: int = 256,
                decoded: DecodedWaves | None = None) -> EmbedSummary:
    """Embed `paths` into `out`: `embeddings.npy` (float32, one row per ok file) and `index.csv`.

    Files are read in chunks of `batch_size` (at most 32 in CPU workers); the clips of a chunk with equal decoded
    length form one model batch (so a file's embedding never depends on its batch neighbours). Memory stays bounded
    whatever the length: clips longer than `CHUNK_FRAMES` log-mel frames (20 s) run alone in chunks, and files
    longer than `max_load_sec` are also read from disk in blocks. With `frames=True`, each ok file's frame
    embeddings and their timestamps (ms) go to `out/frames/<hash>.npz` (`embeddings`, `timestamps_ms`), named in
    index.csv's `frames` column. Finished work is saved in shards every `flush_every` files, so rerunning on the
    same `out` skips it. Failed files are recorded with their error and retried on the next run.

    `num_workers` DataLoader worker processes (default `default_num_workers`: none for files that fit in one chunk,
    else one per CPU core on a CPU model, 2 on an accelerator) decode
    the files. On a CPU model they also run the model, each on one thread: on this project's 2-core benchmark
    machine, two single-threaded processes embed faster than one process on two threads, and decoding then never
    competes with the model's threads (benchmarks/embed_speed.py). With `num_workers=0` everything runs in this
    process. `decoded`: waveforms kept by an earlier pass (`Embedder.fit_norm_stats(..., keep=...)`), used instead
    of decoding those files again.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [str(Path(p).resolve()) for p in paths]
    if len(set(files)) != len(files):
        raise ValueError("duplicate input files")
    on_cpu = embedder.device.type == "cpu"
    fingerprint = {"checkpoint_id": getattr(embedder, "checkpoint_id", None), "frames": frames,
                   "norm_stats": embedder.norm_stats.to_dict() if embedder.norm_stats else None}
    if embedder.compute_dtype != torch.float32:  # fp32 runs keep the fingerprint of earlier versions
        fingerprint["precision"] = precision_name(embedder.compute_dtype)
    shards = _Shards(out, fingerprint)
    todo = [f for f in files if not shards.done(f)]
    skipped = len(files) - len(todo)
    if num_workers is None:
        num_workers = default_num_workers(len(todo), batch_size, on_cpu)
    in_workers = on_cpu and num_workers > 0
    if in_workers and embedder.prenorm is None:
        embedder._normalized_logmel(torch.zeros(1, 1))  # raises the missing-statistics error here, not per file
    # Small chunks keep CPU workers evenly loaded to the end (their model runs micro-batches of 16 anyway).
    chunk = _chunk_size(batch_size, in_workers)
    chunks = _Chunks(todo, chunk, embedder.sample_rate, max_load_sec, embedder if in_workers else None, frames,
                     decoded)
    # Out of order: the next chunk goes to whichever worker is free, so one slowed by a competing job does not
    # hold up the others (records are matched to files by name, the output keeps the input order).
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, collate_fn=_unbatched, num_workers=num_workers,
                                         prefetch_factor=2 if num_workers else None, in_order=False)
    pending_records: list[dict] = []
    pending_emb: list[np.ndarray] = []
    frames_dir = out / "frames"

    def record(item: _Item) -> None:
        file = item.file
        if item.error:
            pending_records.append({"file": file, "status": "error", "error": item.error, "duration_s": ""})
            return
        rec = {"file": file, "status": "ok", "error": "", "duration_s": round(item.duration_s, 4)}
        if item.frames is not None:
            frames_dir.mkdir(exist_ok=True)
            name = f"{hashlib.sha1(file.encode()).hexdigest()[:16]}.npz"
            tmp = frames_dir / f"{name}.tmp.npz"
            np.savez(tmp, embeddings=item.frames.numpy().astype(np.float32),
                     timestamps_ms=embedder.frame_timestamps_ms(len(item.frames)).numpy())
            os.replace(tmp, frames_dir / name)
            rec["frames"] = f"frames/{name}"
        pending_records.append(rec)
        pending_emb.append(item.clip.numpy())

    with tqdm(total=len(todo), desc="embed", unit="file", disable=not progress) as bar:
        for items in loader:
            if not in_workers:
                _embed_items(embedder, items, frames)
            for item in items:
                record(item)
            bar.update(len(items))
            if len(pending_records) >= flush_every:
                shards.write(list(pending_records), list(pending_emb), embedder.embed_dim)
                pending_records.clear()
                pending_emb.clear()
        if pending_records:
            shards.write(pending_records, pending_emb, embedder.embed_dim)
    ok, failed = shards.finalize(out, files, embedder.embed_dim)
    return EmbedSummary(ok=ok, failed=failed, skipped=skipped, out=out)
