"""The resumable files → embeddings job behind `byola embed`, and the reader of its output folder.

OUTDIR holds ``embeddings.npy`` (float32, one row per ok file) and ``index.csv`` (one line per input), or with
``format="parquet"`` one Parquet file ``parquet/part-KKKKK-of-NNNNN.parquet`` holding both, and ``manifest.json``,
written last: it names the generation, the settings fingerprint and the size and SHA-256 of the other files. The
folder is complete exactly when the manifest exists and matches them (`read_embeddings` checks it); a run removes the
manifest before it replaces the files, so an interrupted commit is visible as an incomplete folder, never as a new
matrix beside an old index. A sharded job (`byola.embed_parts`) writes such a folder per part and merges them with
the same commit (`commit_output`).

The resume state lives in ``OUTDIR/.byola_embed``: ``settings.json`` (everything that changes the numbers), shard
files of finished work (each file's record, with its `file_identity` when it was read, and its embedding), and
``lock`` (an advisory lock: one writer at a time, released when its holder dies).
Every file is written through `byola.files` (exclusive unique temporary name, fsync, rename).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import stat
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import embed as _embed
from .audio import AUDIO_EXTENSIONS, AudioError, audio_duration, load_audio_if_shorter, stream_audio
from .decoded import DecodedWaves
from .embed import Embedder, pool_frames
from .errors import UsageError
from .extras import optional_module
from .files import (FolderBusy, FolderLock, atomic_write_bytes, atomic_write_text, atomic_write_with, atomic_writer,
                    file_sha256, fsync_dir, list_inputs)
from .norm import WORKER_CHUNK_FILES, unbatched
from .precision import precision_name

INDEX_COLUMNS = ["file", "row", "status", "error", "duration_s"]
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
FORMATS = ("npy", "parquet")
PARQUET_DIR = "parquet"
_STATE_DIR = ".byola_embed"
_SHOWN_FAILURES = 5
DEFAULT_BATCH_SIZE = 64
# Finished files are saved to the resume state at least this often (and every `flush_every` files), so slow files
# do not keep work unsaved for long; a save writes one small shard.
FLUSH_SECONDS = 60.0
pa = optional_module("pyarrow", "parquet")
pq = optional_module("pyarrow.parquet", "parquet")


class EmbedJobError(UsageError):
    """A job that cannot run as asked (bad option, output folder busy or made with other settings); ``str()`` is
    one line for the user."""


class IncompleteOutput(EmbedJobError):
    """An output folder without a valid manifest: interrupted, in progress, or modified since."""


@dataclass
class EmbedSummary:
    """``ok``/``failed``: files of this job; ``reused``: ok files whose embedding came from an earlier run into the
    same folder (not recomputed); ``failures``: ``(file, reason)`` of the failed files; ``changed``: files embedded
    by an earlier run whose `file_identity` has changed since, embedded again; ``left_out``: files recorded by
    earlier runs into the same folder that are not among this job's inputs (not in its output; their records stay
    in the resume state); ``notes``: more lines for the user (`byola.embed_parts.embed_part`)."""

    ok: int
    failed: int
    reused: int
    out: Path
    failures: list[tuple[str, str]]
    merged_parts: int = 0
    changed: int = 0
    left_out: int = 0
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """The console summary: counts, the first failed files and where the full list is."""
        now = self.ok - self.reused
        done = f"merged from {self.merged_parts} parts" if self.merged_parts else \
            f"{now} embedded now, {self.reused} reused from an earlier run"
        listed = self.out / ("index.csv" if (self.out / "index.csv").exists() else PARQUET_DIR)
        lines = [f"{self.ok} ok ({done}), {self.failed} failed -> {self.out} (every input is listed in {listed})"]
        if self.changed:
            lines.append(f"  {self.changed} changed since the last run (file size or modification time): embedded "
                         "again")
        if self.left_out:
            many = self.left_out != 1
            lines.append(f"  {self.left_out} file{'s' * many} of earlier runs into {self.out} {'are' if many else 'is'}"
                         f" not among these inputs: left out of this output (kept in {self.out / _STATE_DIR}, reused "
                         "by a later run that includes them)")
        lines += [f"  {note}" for note in self.notes]
        for file, reason in self.failures[:_SHOWN_FAILURES]:
            lines.append(f"  failed: {printable(reason if file in reason else f'{file}: {reason}')}")
        if self.failed > _SHOWN_FAILURES:
            lines.append(f"  ... and {self.failed - _SHOWN_FAILURES} more failed (status=error in index.csv)")
        return "\n".join(lines)


@dataclass(frozen=True)
class Part:
    """This job is part ``index`` (0-based) of ``count`` of a sharded job over ``inputs`` files, whose list (in
    order, as `printable` names) has the `byola.files.json_digest` ``inputs_sha256`` (`byola.embed_parts`)."""

    index: int
    count: int
    inputs: int
    inputs_sha256: str
    block: int = 1

    @property
    def name(self) -> str:
        """``KKKKK-of-NNNNN``: sorts in part order."""
        return f"{self.index:05d}-of-{self.count:05d}"

    def to_dict(self) -> dict:
        return {"index": self.index, "count": self.count, "inputs": self.inputs, "inputs_sha256": self.inputs_sha256,
                "block": self.block}


def shard_block(batch_size: int) -> int:
    """A number of files that is a whole number of the job's read chunks however it runs (`_chunk_size`, with or
    without CPU workers). Parts of a sharded job that start at its multiples read the same chunks, hence make the
    same model batches, as one process: the same bytes (a file's embedding depends on its batch only through float
    rounding, but that rounding is not always zero)."""
    return math.lcm(_chunk_size(batch_size, in_workers=True), _chunk_size(batch_size, in_workers=False))


def parquet_name(part: Part | None) -> str:
    """Where a job's Parquet file goes inside its OUTDIR: ``parquet/part-KKKKK-of-NNNNN.parquet`` (one part of one
    for an unsharded job), so the folder ``OUTDIR/parquet`` reads as one dataset."""
    return f"{PARQUET_DIR}/part-{part.name if part else '00000-of-00001'}.parquet"


def printable(text: str) -> str:
    """``text`` with the bytes of file names that are not valid UTF-8 written as ``\\xNN`` (so it can be written
    to a UTF-8 file or terminal)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def collect_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Every path to embed or report, from files, folders (recursive, audio extensions) and ``.txt``/``.lst``
    lists (`byola.files.list_inputs`): readable files and entries that will get an error row (broken links,
    non-regular files, unreadable folders). An input given explicitly that does not exist raises
    `FileNotFoundError`."""
    found = list_inputs(inputs, AUDIO_EXTENSIONS)
    if found.missing:
        raise FileNotFoundError(f"input not found: {found.missing[0]}")
    return found.all()


def check_options(batch_size: int = DEFAULT_BATCH_SIZE, num_workers: int | None = None, max_load_sec: float = 60.0,
                  flush_every: int = 256, format: str = "npy") -> None:
    """Raise `EmbedJobError` (one line) for option values that make no sense, and for ``--format parquet``
    without pyarrow."""
    def positive_int(name: str, value) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EmbedJobError(f"--{name} must be a positive integer, got {value!r}")

    positive_int("batch_size", batch_size)
    positive_int("flush_every", flush_every)
    if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(num_workers, int)
                                    or num_workers < 0):
        raise EmbedJobError(f"--num_workers must be 0 or a positive integer, got {num_workers!r}")
    if isinstance(max_load_sec, bool) or not isinstance(max_load_sec, (int, float)) or not max_load_sec > 0:
        raise EmbedJobError(f"max_load_sec must be a positive number, got {max_load_sec!r}")
    if format not in FORMATS:
        raise EmbedJobError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if format == "parquet":
        pq.write_table  # noqa: B018 -- imports pyarrow now: a missing extra is refused before any work


def job_settings(embedder: Embedder, frames: bool, max_load_sec: float, frame_hop_ms: float | None = None) -> dict:
    """Everything that changes the numbers of an embed job's output: the embedder's `settings()`, frames on/off
    and their hop when it is not the model's own, and the length above which files are decoded in blocks
    (resampled block by block: equal within resampling tolerance, not bit for bit)."""
    settings = {**embedder.settings(), "frames": bool(frames), "max_load_sec": float(max_load_sec)}
    if check_frame_hop(embedder, frames, frame_hop_ms) > 1:  # the model's hop keeps earlier settings valid
        settings["frame_hop_ms"] = float(frame_hop_ms)
    return settings


def check_frame_hop(embedder: Embedder, frames: bool, frame_hop_ms: float | None) -> int:
    """The model's frames pooled into one written frame (`Embedder.frames_per_hop`); raises `EmbedJobError` (one
    line) for a hop without `frames` or one that is not a multiple of the model's."""
    if frame_hop_ms is None:
        return 1
    if not frames:
        raise EmbedJobError(f"--frame_hop_ms {frame_hop_ms:g} is the hop of the frame embeddings: add --frames")
    try:
        return embedder.frames_per_hop(frame_hop_ms)
    except UsageError as err:
        raise EmbedJobError(f"--frame_hop_ms: {err}") from None


def differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """The settings that differ between ``old`` and ``new`` (nested keys dotted), each with both values; a setting
    that `Embedder.settings` leaves out at its default is shown as that default."""
    omitted = {"precision": precision_name(torch.float32)}  # Embedder.settings omits fp32 (older outputs stay valid)
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = (settings.get(key, omitted.get(prefix + key)) for settings in (old, new))
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            names += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key} ({a!r} there, {b!r} now)")
    return names


def recorded_norm_stats(out: str | os.PathLike) -> tuple[float, float] | None:
    """The normalization statistics an earlier run recorded in ``out`` (None if there is none)."""
    path = Path(out) / _STATE_DIR / "settings.json"
    if not path.is_file():
        return None
    stats = json.loads(path.read_text()).get("settings", {}).get("norm_stats")
    return (stats["mean"], stats["std"]) if stats else None


class _State:
    """Finished work kept as shard files under OUTDIR/.byola_embed, so an interrupted run loses nothing that was
    saved (`embed_files` says when it saves)."""

    def __init__(self, out: Path, settings: dict, norm_stats_source: str) -> None:
        self.dir = out / _STATE_DIR
        _make_own_dir(self.dir)
        self.settings = settings
        meta = self.dir / "settings.json"
        if meta.exists():
            previous = json.loads(meta.read_text()).get("settings", {})
            changed = differences(previous, settings)
            if changed:
                raise EmbedJobError(f"{out} holds embeddings made with other settings: {'; '.join(changed)}; "
                                    "choose another --out or delete it")
        else:
            atomic_write_text(meta, json.dumps({"settings": settings, "norm_stats_source": norm_stats_source},
                                               sort_keys=True, indent=1))
        self.records: dict[str, dict] = {}
        self.embeddings: dict[str, np.ndarray] = {}
        self.shards = _shards(self.dir)
        for shard in self.shards:
            with np.load(shard, allow_pickle=False) as data:
                for rec in json.loads(str(data["records"])):
                    self.records[rec["file"]] = rec
                    if rec["status"] == "ok":
                        self.embeddings[rec["file"]] = data["embeddings"][rec["shard_row"]]
                    else:
                        self.embeddings.pop(rec["file"], None)
        self._next = 1 + max((int(p.stem.split("_")[1]) for p in self.shards), default=-1)

    def done(self, file: str) -> bool:
        return self.records.get(file, {}).get("status") == "ok"

    def changed(self, file: str) -> bool:
        """``file`` was embedded by an earlier run, but its `file_identity` differs now (or was not recorded)."""
        return self.done(file) and self.records[file].get("identity") != file_identity(file)

    def write(self, records: list[dict], embeddings: list[np.ndarray], dim: int) -> Path:
        """One shard of finished records (ok ones with their embedding, in order)."""
        ok = [rec for rec in records if rec["status"] == "ok"]
        for row, rec in enumerate(ok):
            rec["shard_row"] = row
        stacked = np.stack(embeddings).astype(np.float32) if embeddings else np.zeros((0, dim), np.float32)
        path = self.dir / f"shard_{self._next:07d}.npz"
        with atomic_writer(path) as f:
            np.savez(f, embeddings=stacked, records=np.array(json.dumps(records)))
        self._next += 1
        for rec in records:
            self.records[rec["file"]] = rec
            self.embeddings.pop(rec["file"], None)
        for rec, emb in zip(ok, embeddings):
            self.embeddings[rec["file"]] = emb
        return path

    def compact(self, dim: int) -> None:
        """Rewrite the state as one shard (latest record per file), so reruns of a job do not grow it."""
        old = _shards(self.dir)
        if len(old) <= 1:
            return
        records = [dict(rec) for rec in self.records.values()]
        self.write(records, [self.embeddings[r["file"]] for r in records if r["status"] == "ok"], dim)
        for path in old:  # the new shard, read last, already holds everything they hold
            path.unlink()

    def commit(self, out: Path, files: list[str], dim: int, format: str = "npy",
               part: Part | None = None) -> tuple[int, list[tuple[str, str]]]:
        """Write the output of `files` (in this order) in ``format``, then the manifest that vouches for it."""
        ok_files = [f for f in files if self.done(f)]
        matrix = np.stack([self.embeddings[f] for f in ok_files]).astype(np.float32) if ok_files \
            else np.zeros((0, dim), np.float32)
        row_of = {f: i for i, f in enumerate(ok_files)}
        rows, failures = [], []
        for file in files:
            rec = self.records[file]
            rows.append({"file": printable(file), "row": row_of.get(file, ""), "status": rec["status"],
                         "error": printable(rec.get("error", "")), "duration_s": rec.get("duration_s", ""),
                         "frames": printable(rec.get("frames", ""))})
            if rec["status"] != "ok":
                failures.append((file, rec.get("error", "")))
        if format == "parquet":
            table = parquet_table(rows, matrix, self.settings)
            contents = {parquet_name(part): lambda path: atomic_write_with(path,
                                                                           lambda tmp: pq.write_table(table, tmp))}
        else:
            index_bytes = index_csv(rows)  # everything that can fail is done before the first write
            contents = {"embeddings.npy": lambda path: _save_npy(path, matrix),
                        "index.csv": lambda path: atomic_write_bytes(path, index_bytes)}
        fields = {"settings": self.settings, "rows": len(ok_files), "files": len(files), "failed": len(failures)}
        commit_output(out, contents, {**fields, **({"part": part.to_dict()} if part else {})})
        return len(ok_files), failures


def _save_npy(path: Path, matrix: np.ndarray) -> None:
    with atomic_writer(path) as f:
        np.save(f, matrix)


def index_csv(rows: list[dict]) -> bytes:
    """index.csv's bytes for `rows` (dicts with the `INDEX_COLUMNS` and ``frames``); the ``frames`` column is
    written when any row names a frames file."""
    with_frames = any(row.get("frames") for row in rows)
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=INDEX_COLUMNS + (["frames"] if with_frames else []),
                            lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode("utf-8")


def parquet_table(rows: list[dict], matrix: np.ndarray, settings: dict) -> pa.Table:
    """A `pyarrow.Table` of `rows` (as for `index_csv`): columns ``file, status, error, duration_s`` (null for
    failed files), ``embedding`` (fixed-size list of float32; null for failed files) and, when any row names one,
    ``frames`` (the frames file, relative to OUTDIR). The job's settings go in the schema metadata (``byola``)."""
    ok = np.array([row["status"] == "ok" for row in rows], dtype=bool)
    full = np.zeros((len(rows), matrix.shape[1]), np.float32)
    full[ok] = matrix
    columns = {
        "file": pa.array([row["file"] for row in rows], pa.string()),
        "status": pa.array([row["status"] for row in rows], pa.string()),
        "error": pa.array([row["error"] for row in rows], pa.string()),
        "duration_s": pa.array([None if row["duration_s"] == "" else float(row["duration_s"]) for row in rows],
                               pa.float64()),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(full.reshape(-1), pa.float32()), matrix.shape[1],
                                                       mask=pa.array(~ok)),
    }
    if any(row.get("frames") for row in rows):
        columns["frames"] = pa.array([row.get("frames", "") for row in rows], pa.string())
    return pa.table(columns, metadata={"byola": json.dumps({"settings": settings}, sort_keys=True)})


def _output_files(out: Path) -> list[str]:
    """The output files of either format present in ``out`` (names relative to it)."""
    names = [name for name in ("embeddings.npy", "index.csv") if (out / name).exists()]
    return names + sorted(f"{PARQUET_DIR}/{p.name}" for p in (out / PARQUET_DIR).glob("part-*.parquet"))


def commit_output(out: Path, contents: Mapping[str, Callable[[Path], None]], fields: dict) -> None:
    """Replace ``out``'s output as one commit: remove the manifest (from then on the folder reads as incomplete),
    remove output files of an earlier run that ``contents`` does not name (the other format, other parts; and the
    ``parquet`` folder when that leaves it empty), make each file of ``contents`` (name → a function writing
    ``out/name`` atomically), then write the manifest naming their sizes and SHA-256, ``fields`` and the next
    generation number."""
    manifest_path = out / MANIFEST
    generation = _read_manifest(out).get("generation", 0) if manifest_path.exists() else 0
    manifest_path.unlink(missing_ok=True)
    fsync_dir(out)
    for name in _output_files(out):
        if name not in contents:
            (out / name).unlink()
    parquet_dir = out / PARQUET_DIR
    if parquet_dir.is_dir() and not any(Path(name).parent == Path(PARQUET_DIR) for name in contents) and \
            not any(parquet_dir.iterdir()):
        parquet_dir.rmdir()  # the other format's folder, now empty
    for name, make in contents.items():
        (out / name).parent.mkdir(exist_ok=True)
        make(out / name)
    for folder in {(out / name).parent for name in contents} - {out}:
        fsync_dir(folder)
    manifest = {"format": MANIFEST_FORMAT, "generation": generation + 1, **fields,
                "contents": {name: {"bytes": (out / name).stat().st_size, "sha256": file_sha256(out / name)}
                             for name in contents}}
    atomic_write_text(manifest_path, json.dumps(manifest, indent=1, sort_keys=True))
    fsync_dir(out)


def _shards(folder: Path) -> list[Path]:
    """The state's shard files, in order (regular files named ``shard_NNNNNNN.npz``; anything else is ignored)."""
    return sorted(p for p in folder.glob("shard_*.npz")
                  if re.fullmatch(r"shard_\d{7}\.npz", p.name) and stat.S_ISREG(os.lstat(p).st_mode))


def _make_own_dir(path: Path) -> None:
    """Create ``path`` (a folder byola writes in); refuse a link or a non-folder placed under its name."""
    path.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or not stat.S_ISDIR(os.lstat(path).st_mode):
        raise EmbedJobError(f"{path} is a link or not a folder: byola only writes in folders it creates")


def _read_manifest(out: Path) -> dict:
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


@dataclass
class EmbedOutput:
    """A complete, checked embed output folder: ``embeddings`` [rows, D] float32, ``index`` (index.csv's rows as
    dicts; ``row`` is an int for ok files, None otherwise) and the ``settings`` that made it."""

    embeddings: np.ndarray
    index: list[dict]
    settings: dict
    generation: int


def check_output(out: str | os.PathLike, verify: bool = True) -> dict:
    """The manifest of a complete embed output folder: it exists and the sizes (and, with ``verify``, the SHA-256)
    of the files it names match. Raises `IncompleteOutput` otherwise."""
    out = Path(out)
    manifest = _read_manifest(out)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise IncompleteOutput(f"{out} is not a complete byola embed output (no valid {MANIFEST}: a run was "
                               "interrupted, is still running, or the folder was modified); rerun the same "
                               "byola embed command to complete it")
    for name, expected in manifest["contents"].items():
        path = out / name
        if not path.is_file() or path.stat().st_size != expected["bytes"] or \
                (verify and file_sha256(path) != expected["sha256"]):
            raise IncompleteOutput(f"{path} does not match {out / MANIFEST} (generation "
                                   f"{manifest['generation']}): the folder was modified or a run was interrupted; "
                                   "rerun the same byola embed command")
    return manifest


def read_embeddings(out: str | os.PathLike, verify: bool = True) -> EmbedOutput:
    """Read an embed output folder of either format, checking that it is complete (`check_output`). Raises
    `IncompleteOutput` otherwise."""
    out = Path(out)
    manifest = check_output(out, verify)
    if "index.csv" in manifest["contents"]:
        embeddings = np.load(out / "embeddings.npy", allow_pickle=False)
        with open(out / "index.csv", newline="", encoding="utf-8") as f:
            index = list(csv.DictReader(f))
    else:  # Parquet: the files the manifest names, in part order
        table = pa.concat_tables([pq.read_table(out / name)
                                          for name in sorted(manifest["contents"])])
        ok = np.array([status == "ok" for status in table["status"].to_pylist()], dtype=bool)
        vectors = table["embedding"].combine_chunks()
        dim = vectors.type.list_size
        embeddings = vectors.values.to_numpy(zero_copy_only=False).reshape(-1, dim)[ok]
        index, row = [], 0
        for rec, good in zip(table.drop_columns(["embedding"]).to_pylist(), ok):
            rec["duration_s"] = "" if rec["duration_s"] is None else str(rec["duration_s"])
            rec["row"], row = (str(row), row + 1) if good else ("", row)
            index.append(rec)
    for row in index:
        row["row"] = int(row["row"]) if row["row"] != "" else None
    return EmbedOutput(embeddings, index, manifest["settings"], manifest["generation"])


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
    identity: dict | None = None


# Failures about one input, which become its status=error row while the job goes on: the decoder's AudioError and
# the ValueError the frontend and the encoder raise for a clip too short for them. Anything else (out of memory, a
# programming error, an interrupt) propagates: the job stops before its commit and stays resumable.
_INPUT_ERRORS = (AudioError, ValueError)


def _failure(file: str, err: Exception) -> str:
    return str(err) if isinstance(err, AudioError) else f"{file}: {type(err).__name__}: {err}"


def _check_input(file: str) -> tuple[str, dict | None]:
    """Why ``file`` cannot be opened as an audio file (broken link, folder, FIFO, ...), or "" if it can be tried;
    and its `file_identity`, from the same `os.stat`, taken before the file is read."""
    try:
        info = os.stat(file)
    except FileNotFoundError:
        missing = f"broken link to {os.readlink(file)}" if os.path.islink(file) else "no such file"
        return f"{file}: {missing}", None
    except OSError as err:
        return f"{file}: cannot read: {err.strerror}", None
    if stat.S_ISDIR(info.st_mode):
        return f"{file}: a folder, not an audio file" + ("" if os.access(file, os.R_OK | os.X_OK)
                                                         else " (and not readable)"), None
    return ("" if stat.S_ISREG(info.st_mode) else f"{file}: not a regular file"), _identity(info)


def file_identity(file: str) -> dict | None:
    """What a rerun compares to notice that ``file`` changed since it was embedded (then it is embedded again, not
    reused): its size and modification time in ns (`os.stat`, following links), or None if it cannot be stat'ed.

    Not a content hash: that would read every reused file in full on every rerun, about the cost of decoding it,
    which is the work resuming saves on a large corpus; a stat costs no read. Every write through the file system
    sets the modification time, so a file rewritten, replaced (``cp``, ``mv``, an editor's save) or a link
    retargeted is noticed. Not noticed: a change that restores both the size and the modification time to the ns
    (``touch -r``, ``cp -p`` from a file of the same size and time), or a same-size rewrite within the file
    system's timestamp granularity (a few ms) of the write before it, while the job was reading the file (the
    stat is taken before the read)."""
    try:
        return _identity(os.stat(file))
    except OSError:
        return None


def _identity(info: os.stat_result) -> dict:
    return {"size": info.st_size, "mtime_ns": info.st_mtime_ns}


_NOT_FINITE = "the model's embedding is not finite (NaN or Inf): the checkpoint's weights or normalization " \
              "statistics are broken"


def _embed_items(embedder: Embedder, items: list[_Item], frames: bool) -> None:
    """Embed the decoded (or to be streamed) items in place.

    Clips of up to `CHUNK_FRAMES` log-mel frames run in batches of equal length (nothing is padded: a file's
    embedding does not depend on its neighbours beyond float rounding, see README); longer ones run alone in
    chunks, so memory stays bounded. A batch the model rejects (e.g. clips shorter than its minimum) fails per
    file; an embedding with NaN or Inf is an error.
    """
    groups: dict[int, list[_Item]] = {}
    for item in items:
        if item.stream:
            _embed_in_chunks(embedder, item, stream_audio(item.file, embedder.sample_rate), frames)
        elif item.wave is not None and embedder.frontend.n_frames(len(item.wave)) > _embed.CHUNK_FRAMES:
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
        except _INPUT_ERRORS as err:  # reported per file, the run goes on
            for item in group:
                item.error, item.wave = _failure(item.file, err), None
            continue
        finite = torch.isfinite(clips).all(dim=1)
        if frame_emb is not None:
            finite &= torch.isfinite(frame_emb).flatten(1).all(dim=1)
        for k, item in enumerate(group):
            item.wave = None
            if not finite[k]:
                item.error = f"{item.file}: {_NOT_FINITE}"
                continue
            item.clip = clips[k].float().cpu()
            item.frames = None if frame_emb is None else frame_emb[k].float().cpu()


def _embed_in_chunks(embedder: Embedder, item: _Item, blocks: Iterable[torch.Tensor], frames: bool) -> None:
    """Embed one long input given as waveform blocks, chunk by chunk (`Embedder._stream_frame_embeddings`)."""
    try:
        chunks = embedder._stream_frame_embeddings(blocks)
        if frames:  # frame embeddings are kept whole; clip embeddings pool on the fly
            item.frames = torch.cat(list(chunks)).float().cpu()
            item.clip = pool_frames([item.frames])
        else:
            item.clip = pool_frames(chunks).float().cpu()
        if not (torch.isfinite(item.clip).all() and (item.frames is None or torch.isfinite(item.frames).all())):
            item.clip, item.frames, item.error = None, None, f"{item.file}: {_NOT_FINITE}"
        elif item.stream:
            item.duration_s = audio_duration(item.file)
    except _INPUT_ERRORS as err:  # reported per file, the run goes on
        item.error = _failure(item.file, err)
    item.wave, item.stream = None, False


class _Chunks(torch.utils.data.Dataset):
    """Item k = files [k·size, (k+1)·size): decoded and resampled, and, when given an `embedder`, also embedded.

    In DataLoader workers this puts whole files' work in parallel processes (one torch thread each).
    """

    def __init__(self, files: list[str], size: int, sample_rate: int, max_load_sec: float,
                 embedder: Embedder | None, frames: bool, decoded: DecodedWaves | None = None) -> None:
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
            error, identity = _check_input(file)
            item = _Item(file, error=error, identity=identity)
            if not item.error:
                try:
                    item.wave = self._decode(file)
                    if item.wave is None:
                        item.stream = True
                    else:
                        item.duration_s = len(item.wave) / self.sample_rate
                except _INPUT_ERRORS as err:  # reported per file, the run goes on
                    item.error = _failure(file, err)
            items.append(item)
        if self.embedder is not None:
            _embed_items(self.embedder, items, self.frames)
        return items


class _StopSignals:
    """While a job runs in the main thread: SIGINT raises `KeyboardInterrupt` (as by default) and SIGTERM raises
    ``SystemExit(143)`` (the status a shell reports for a process SIGTERM ends) instead of ending the process on
    the spot, so the job saves its finished files on the way out and every ``finally`` runs. Inside `deferred`,
    both wait for its end, so a second Ctrl-C does not cut a save short. Handlers someone else installed (or an
    ignored signal) are left alone."""

    _DEFAULTS = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._deferring = False
        self._caught: int | None = None

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum, default in self._DEFAULTS.items():
                if signal.getsignal(signum) is default:
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame) -> None:
        if self._deferring:
            self._caught = self._caught or signum
        else:
            self._stop(signum)

    @staticmethod
    def _stop(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
            caught, self._caught = self._caught, None
            if caught:
                self._stop(caught)


def _worker_stops_quietly(worker_id: int) -> None:
    """In a worker: SIGTERM ends it as Ctrl-C does (torch's worker loop exits quietly), so a SIGTERM sent to the
    whole job (a scheduler's cancel) stops the workers without a traceback while this process saves its work."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _raise_keyboard_interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


def _chunk_size(batch_size: int, in_workers: bool) -> int:
    return min(batch_size, WORKER_CHUNK_FILES) if in_workers else batch_size


def default_num_workers(n_files: int, batch_size: int, on_cpu: bool) -> int:
    """Worker processes for `embed_files` on `n_files` files: none when they fit in one chunk (a handful of files
    is embedded in this process, without paying for workers to start), else one per CPU core on a CPU model (at
    most one per chunk; each runs the model on one thread), 2 decoding for an accelerator."""
    n_chunks = -(-n_files // _chunk_size(batch_size, on_cpu))
    if n_chunks <= 1:
        return 0
    return min(len(os.sched_getaffinity(0)), n_chunks) if on_cpu else 2


def frames_name(file: str) -> str:
    """Where ``file``'s frame embeddings go inside OUTDIR: ``frames/`` + its absolute path + ``.npz``, so they can
    be found without index.csv."""
    return "frames/" + os.path.abspath(file).lstrip(os.sep) + ".npz"


def embed_files(embedder: Embedder, paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                batch_size: int = DEFAULT_BATCH_SIZE, frames: bool = False, num_workers: int | None = None,
                max_load_sec: float = 60.0, progress: bool = True, flush_every: int = 256,
                decoded: DecodedWaves | None = None, format: str = "npy", part: Part | None = None,
                frame_hop_ms: float | None = None) -> EmbedSummary:
    """Embed `paths` into `out`: `embeddings.npy` (float32, one row per ok file), `index.csv` (one line per path,
    in the given order, paths absolute but links not resolved) and `manifest.json` (see the module docstring).
    With ``format="parquet"``, one Parquet file (`parquet_name`, columns as in `parquet_table`) replaces the first
    two. ``part`` marks the job as one part of a sharded job (`byola.embed_parts`; recorded in the manifest).

    Files are read in chunks of `batch_size` (at most 32 in CPU workers); the clips of a chunk with equal decoded
    length form one model batch. Memory stays bounded whatever the length: clips longer than `CHUNK_FRAMES`
    log-mel frames (20 s) run alone in chunks, and files longer than `max_load_sec` are also read from disk in
    blocks. With `frames=True`, each ok file's frame embeddings and their timestamps (ms) go to
    `out/frames/<absolute path of the file>.npz` (`embeddings`, `timestamps_ms`), also named in index.csv's
    `frames` column, at the model's frame hop or at `frame_hop_ms` (a multiple of it; frames are mean-pooled, see
    `Embedder.frames_at_hop`; the clip embeddings do not change).

    Finished work is saved to the resume state every `flush_every` files and at least every `FLUSH_SECONDS`, and
    when the job stops early: on an exception, on Ctrl-C (`KeyboardInterrupt`) and on SIGTERM (`SystemExit(143)`,
    when called from the main thread: `_StopSignals`); rerunning on the same `out` reuses it. A kill -9 (or a
    crash of the machine) loses only the finished files not saved yet: fewer than `flush_every`, all finished
    within `FLUSH_SECONDS` after the last save. Stopped either way, files still in worker processes (being
    embedded, or done but not yet handed over) are embedded again by the rerun. A file whose `file_identity`
    changed since it was embedded is embedded again. Failed files are recorded with their error and retried on the
    next run. A second job into the same `out` while one runs, or one with settings that change the numbers
    (`job_settings`), raises `EmbedJobError`.

    `num_workers` DataLoader worker processes (default `default_num_workers`: none for files that fit in one chunk,
    else one per CPU core on a CPU model, 2 on an accelerator) decode the files. On a CPU model they also run the
    model, each on one thread: on this project's 2-core benchmark machine, two single-threaded processes embed
    faster than one process on two threads, and decoding then never competes with the model's threads
    (benchmarks/embed_speed.py). With `num_workers=0` everything runs in this process. `decoded`: waveforms kept
    by an earlier pass (`Embedder.fit_norm_stats(..., keep=...)`), used instead of decoding those files again.
    """
    check_options(batch_size, num_workers, max_load_sec, flush_every, format)
    check_frame_hop(embedder, frames, frame_hop_ms)
    out = Path(out)
    files = [os.path.abspath(p) for p in paths]
    if len(set(files)) != len(files):
        raise EmbedJobError("duplicate input files")
    if embedder.prenorm is None:
        embedder._normalized_logmel(torch.zeros(1, 1))  # raises the missing-statistics error before any work
    with writing(out):
        return _run(embedder, files, out, batch_size, frames, num_workers, max_load_sec, progress, flush_every,
                    decoded, format, part, frame_hop_ms)


@contextmanager
def writing(out: Path) -> Iterator[None]:
    """Create ``out`` if needed and hold its writer lock (``out/.byola_embed/lock``) meanwhile: one job or merge
    writes into a folder at a time. Raises `EmbedJobError` when another holds it."""
    _make_own_dir(out)
    _make_own_dir(out / _STATE_DIR)
    lock = FolderLock(out / _STATE_DIR, "lock")
    try:
        lock.acquire()
    except FolderBusy as err:
        raise EmbedJobError(f"{out} is being written by another byola embed run; wait for it to finish or choose "
                            "another --out") from err
    except OSError as err:
        raise EmbedJobError(f"cannot lock {lock.path}: {err.strerror} (a link or another file placed there?)") \
            from err
    try:
        yield
    finally:
        lock.release()


def _run(embedder: Embedder, files: list[str], out: Path, batch_size: int, frames: bool, num_workers: int | None,
         max_load_sec: float, progress: bool, flush_every: int, decoded: DecodedWaves | None, format: str,
         part: Part | None, frame_hop_ms: float | None) -> EmbedSummary:
    on_cpu = embedder.device.type == "cpu"
    state = _State(out, job_settings(embedder, frames, max_load_sec, frame_hop_ms),
                   getattr(embedder, "norm_stats_source", ""))
    had_state = bool(state.shards)
    changed = {f for f in files if state.changed(f)}
    todo = [f for f in files if not state.done(f) or f in changed]
    reused = len(files) - len(todo)
    if num_workers is None:
        num_workers = default_num_workers(len(todo), batch_size, on_cpu)
    in_workers = on_cpu and num_workers > 0
    # Small chunks keep CPU workers evenly loaded to the end (their model runs micro-batches of 16 anyway).
    chunk = _chunk_size(batch_size, in_workers)
    chunks = _Chunks(todo, chunk, embedder.sample_rate, max_load_sec, embedder if in_workers else None, frames,
                     decoded)
    # Out of order: the next chunk goes to whichever worker is free, so one slowed by a competing job does not
    # hold up the others (records are matched to files by name; `commit` writes them in the input order).
    loader = torch.utils.data.DataLoader(chunks, batch_size=None, collate_fn=unbatched, num_workers=num_workers,
                                         prefetch_factor=2 if num_workers else None, in_order=False,
                                         worker_init_fn=_worker_stops_quietly)
    # Finished files not saved yet, as (record, clip embedding or None): one append each, so a signal arriving
    # anywhere leaves records and embeddings paired.
    pending: list[tuple[dict, np.ndarray | None]] = []

    def record(item: _Item) -> tuple[dict, np.ndarray | None]:
        file = item.file
        if item.error:
            return {"file": file, "status": "error", "error": item.error, "duration_s": ""}, None
        rec = {"file": file, "status": "ok", "error": "", "duration_s": round(item.duration_s, 4),
               "identity": item.identity}
        if item.frames is not None:
            name = frames_name(file)
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            embeddings, timestamps_ms = embedder.frames_at_hop(item.frames, frame_hop_ms)
            with atomic_writer(out / name) as f:
                np.savez(f, embeddings=embeddings.numpy().astype(np.float32), timestamps_ms=timestamps_ms.numpy())
            rec["frames"] = name
        return rec, item.clip.numpy()

    def save() -> None:
        if pending:
            state.write([rec for rec, _ in pending], [emb for _, emb in pending if emb is not None],
                        embedder.embed_dim)
            pending.clear()

    with tqdm(total=len(todo), desc="embed", unit="file", disable=not progress) as bar, _StopSignals() as stops:
        try:
            saved_at = time.monotonic()
            for items in loader:
                if not in_workers:
                    _embed_items(embedder, items, frames)
                for item in items:
                    pending.append(record(item))
                bar.update(len(items))
                if len(pending) >= flush_every or time.monotonic() - saved_at >= FLUSH_SECONDS:
                    with stops.deferred():
                        save()
                    saved_at = time.monotonic()
        finally:  # also when stopped (Ctrl-C, SIGTERM, an error): what is finished is kept
            with stops.deferred():
                save()
    if had_state:
        state.compact(embedder.embed_dim)
    ok, failures = state.commit(out, files, embedder.embed_dim, format, part)
    return EmbedSummary(ok=ok, failed=len(failures), reused=reused, out=out, failures=failures,
                        changed=len(changed), left_out=len(state.records.keys() - set(files)))
