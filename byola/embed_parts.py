"""Sharded embed jobs: N processes each embed one shard of the inputs into a part folder of their own, and one merge
joins the parts into the OUTDIR a single process would write (same files, same row order, same bytes).

The processes are torchrun's ranks (`embed_distributed`: rank 0 merges once every rank is done) or N jobs of a
scheduler (`embed_part`, then `merge_parts` once all are complete), on any machines that share OUTDIR's file system.

- Shard: part K of N embeds a contiguous run of about T/N of the T inputs in the order given (the sorted listing
  of `byola.files.list_inputs` from the command line; `shard_bounds`), so the parts in order are the single
  process's order; balanced by file count (not by duration); cut at multiples of `byola.embed_job.shard_block`,
  so each part makes the same model batches as one process would, hence the same bytes. With fewer blocks than
  parts, some parts get no inputs; each part's summary says so (`embed_part`).
- Part: ``OUTDIR/parts/KKKKK-of-NNNNN/`` is a complete embed job folder of its own (`byola.embed_job`: resumable,
  locked, manifest written last), whose manifest also records the part: K, N, T and the digest of the whole
  input list. A process writes only its own part folder; only the merge writes OUTDIR's own files.
- Merge: refuses a missing or incomplete part (naming every one), and parts made with other settings, other
  inputs or another format; then, as one commit (`byola.embed_job.commit_output`), writes ``embeddings.npy`` and
  ``index.csv`` as the concatenation of the parts' (rows renumbered; streamed, so memory does not grow with the
  corpus) or links the parts' Parquet files into ``OUTDIR/parquet``; frame files are linked into ``OUTDIR/frames``.
  The parts stay: they are the resume state (a rerun of the same command reuses them, then merges again).
"""
from __future__ import annotations

import csv
import functools
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Sequence

import numpy as np

from .embed import Embedder
from .embed_job import (DEFAULT_BATCH_SIZE, EmbedJobError, EmbedSummary, IncompleteOutput, Part, check_output,
                        commit_output, differences, embed_files, index_csv, parquet_name, pq, printable, shard_block,
                        writing)
from .files import atomic_link, atomic_write_bytes, atomic_write_with, json_digest

PARTS_DIR = "parts"
# How long rank 0 waits for the slowest rank before merging (torchrun); the parts stay resumable and mergeable
# (`byola embed --merge OUT`) if it gives up.
MERGE_WAIT = timedelta(hours=24)
_SHOWN_PROBLEMS = 5


def shard_bounds(total: int, index: int, count: int, block: int = 1) -> tuple[int, int]:
    """The files ``[lo, hi)`` of ``total`` inputs that part ``index`` of ``count`` embeds: contiguous, starting at
    a multiple of ``block`` (`byola.embed_job.shard_block`), sizes that differ by at most one block, every file in
    exactly one part."""
    blocks = -(-total // block)
    return min(total, index * blocks // count * block), min(total, (index + 1) * blocks // count * block)


def parse_shard(text: str | Sequence[int]) -> tuple[int, int]:
    """``"K/N"`` (part K of N, counted from 0: ``0/4`` … ``3/4``) → ``(K, N)``; `EmbedJobError` when malformed."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not int(match[1]) < int(match[2]):
        raise EmbedJobError(f"--shard expects K/N with 0 <= K < N (part K of N, counted from 0), got {text!r}")
    return int(match[1]), int(match[2])


def part_folder(out: str | os.PathLike, part: Part) -> Path:
    """The embed_job folder of ``part`` of a sharded job into ``out``: ``out/parts/KKKKK-of-NNNNN``."""
    return Path(out) / PARTS_DIR / part.name


def _inputs_digest(printable_names: Sequence[str]) -> str:
    return json_digest(list(printable_names))


def embed_part(embedder: Embedder, paths: Sequence[str | os.PathLike], out: str | os.PathLike, index: int,
               count: int, **job) -> EmbedSummary:
    """Embed part ``index`` of ``count`` of ``paths`` (`shard_bounds`) into ``out/parts/KKKKK-of-NNNNN``; ``job``
    are `byola.embed_job.embed_files`' options. Resumable like any embed job. Raises `EmbedJobError` when the
    embedder has no normalization statistics: a part cannot compute those of all the inputs."""
    if not (isinstance(count, int) and isinstance(index, int) and 0 <= index < count):
        raise EmbedJobError(f"part {index} of {count}: need 0 <= index < count")
    if embedder.prenorm is None:
        raise EmbedJobError("a sharded job needs normalization statistics fixed in advance (a part sees only its "
                            "own files): give --norm_stats MEAN,STD (`byola stats INPUT...` prints them) or a "
                            "checkpoint that carries them")
    files = [os.path.abspath(p) for p in paths]
    if len(set(files)) != len(files):
        raise EmbedJobError("duplicate input files")
    block = shard_block(job.get("batch_size", DEFAULT_BATCH_SIZE))
    lo, hi = shard_bounds(len(files), index, count, block)
    part = Part(index, count, len(files), _inputs_digest([printable(f) for f in files]), block)
    summary = embed_files(embedder, files[lo:hi], part_folder(out, part), part=part, **job)
    blocks = -(-len(files) // block)
    if blocks < count:
        summary.notes.append(f"only {blocks} of the {count} parts get inputs: the {len(files)} inputs make {blocks} "
                             f"block{'s' * (blocks != 1)} of {block} files, and parts are cut between blocks so that "
                             "the merge equals one process's output byte for byte (a smaller --batch_size makes "
                             f"smaller blocks); this part {f'embeds {hi - lo}' if hi > lo else 'is empty'}")
    return summary


def _found_counts(out: Path) -> list[int]:
    """The part counts N of the part folders under ``out/parts``."""
    names = (p.name for p in (out / PARTS_DIR).iterdir()) if (out / PARTS_DIR).is_dir() else ()
    return sorted({int(m[2]) for m in map(re.compile(r"(\d{5,})-of-(\d{5,})").fullmatch, names) if m})


def merge_parts(out: str | os.PathLike, count: int | None = None, verify: bool = True) -> EmbedSummary:
    """Join the ``count`` parts under ``out/parts`` (default: the only part count there) into ``out``'s output,
    exactly as one process embedding all the inputs would have written it. Raises `EmbedJobError` (one line)
    naming every missing or incomplete part, or the first part made with other settings, inputs or format."""
    out = Path(out)
    if count is None:
        counts = _found_counts(out)
        if not counts:
            raise EmbedJobError(f"{out / PARTS_DIR} holds no parts: run `byola embed INPUT... --out {out} "
                                "--shard K/N` for every K first")
        if len(counts) > 1:
            raise EmbedJobError(f"{out / PARTS_DIR} holds parts of {' and '.join(map(str, counts))} shards: remove "
                                "the part folders of the sharding you no longer want, then merge")
        count = counts[0]
    parts = [Part(k, count, 0, "") for k in range(count)]
    manifests, problems = [], []
    for part in parts:
        folder = part_folder(out, part)
        label = f"part {part.index}/{count} ({folder})"
        if not folder.is_dir():
            problems.append(f"{label} missing")
            continue
        try:
            manifest = check_output(folder, verify)
        except IncompleteOutput:
            problems.append(f"{label} incomplete (failed, interrupted or still running)")
            continue
        recorded = manifest.get("part", {})
        if (recorded.get("index"), recorded.get("count")) != (part.index, count):
            problems.append(f"{label} holds {recorded.get('index', 'no part')}/{recorded.get('count', '-')}")
        manifests.append(manifest)
    if problems:
        more = f"; and {len(problems) - _SHOWN_PROBLEMS} more" if len(problems) > _SHOWN_PROBLEMS else ""
        raise EmbedJobError(f"cannot merge {out}: {'; '.join(problems[:_SHOWN_PROBLEMS])}{more}; run the same "
                            "byola embed command for those parts (--shard K/N), then merge again")
    first = manifests[0]
    for k, manifest in enumerate(manifests):
        changed = differences(first["settings"], manifest["settings"])
        if changed:
            raise EmbedJobError(f"cannot merge {out}: part {k}/{count} was made with other settings than part "
                                f"0/{count}: {'; '.join(changed)}; rerun it with the same settings")
        if (manifest["part"]["inputs"], manifest["part"]["inputs_sha256"]) != \
                (first["part"]["inputs"], first["part"]["inputs_sha256"]):
            raise EmbedJobError(f"cannot merge {out}: part {k}/{count} was made from other inputs than part "
                                f"0/{count} ({manifest['part']['inputs']} vs {first['part']['inputs']} files, or "
                                "other paths); rerun it with the same inputs")
        if manifest["part"].get("block") != first["part"].get("block"):
            raise EmbedJobError(f"cannot merge {out}: parts 0/{count} and {k}/{count} were split for different "
                                "--batch_size; rerun one of them with the other's")
        if ("index.csv" in manifest["contents"]) != ("index.csv" in first["contents"]):
            raise EmbedJobError(f"cannot merge {out}: parts 0/{count} and {k}/{count} have different --format; "
                                "rerun one of them")
    folders = [part_folder(out, part) for part in parts]
    npy = "index.csv" in first["contents"]
    rows = [{**row, "folder": folder} for part, folder in zip(parts, folders)
            for row in (_read_index(folder) if npy else _read_parquet_rows(folder / parquet_name(part)))]
    if len(rows) != first["part"]["inputs"] or \
            _inputs_digest([row["file"] for row in rows]) != first["part"]["inputs_sha256"]:
        raise EmbedJobError(f"cannot merge {out}: the parts' files are not the inputs they were made from (a part "
                            "folder was modified or copied from another job)")
    ok = 0
    for row in rows:
        row["row"], ok = (ok, ok + 1) if row["status"] == "ok" else ("", ok)
    failures = [(row["file"], row["error"]) for row in rows if row["status"] != "ok"]
    with writing(out):
        for row in rows:  # frame files where a single process writes them
            if row.get("frames"):
                (out / row["frames"]).parent.mkdir(parents=True, exist_ok=True)
                atomic_link(row["folder"] / row["frames"], out / row["frames"])
        if npy:
            dim = np.load(folders[0] / "embeddings.npy", mmap_mode="r").shape[1]
            index_bytes = index_csv(rows)
            contents = {"embeddings.npy": lambda path: atomic_write_with(
                            path, lambda tmp: _concatenate_npy([f / "embeddings.npy" for f in folders], tmp, ok, dim)),
                        "index.csv": lambda path: atomic_write_bytes(path, index_bytes)}
        else:
            contents = {parquet_name(part): functools.partial(atomic_link, folder / parquet_name(part))
                        for part, folder in zip(parts, folders)}
        commit_output(out, contents, {"settings": first["settings"], "rows": ok, "files": len(rows),
                                      "failed": len(failures)})
    return EmbedSummary(ok=ok, failed=len(failures), reused=0, out=out, failures=failures, merged_parts=count)


def _read_index(folder: Path) -> list[dict]:
    with open(folder / "index.csv", newline="", encoding="utf-8") as f:
        return [{"frames": "", **row} for row in csv.DictReader(f)]


def _read_parquet_rows(path: Path) -> list[dict]:
    return pq.read_table(path).drop_columns(["embedding"]).to_pylist()


def _concatenate_npy(sources: list[Path], tmp: str, rows: int, dim: int) -> None:
    """Write the row-wise concatenation of the ``sources`` .npy matrices to ``tmp`` (the header `np.save` writes),
    one source at a time."""
    merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(rows, dim))
    start = 0
    for source in sources:
        block = np.load(source, mmap_mode="r")
        merged[start:start + len(block)] = block
        start += len(block)
    merged.flush()
    del merged


def embed_distributed(embedder: Embedder, paths: Sequence[str | os.PathLike], out: str | os.PathLike,
                      **job) -> EmbedSummary:
    """Under torchrun: this rank embeds part RANK of WORLD_SIZE (`embed_part`); once every rank is done (a gloo
    all-gather, whatever the device), rank 0 merges the parts and returns the merged summary, the others their
    part's. On a CPU, the default number of workers is this process's cores divided among the node's ranks. A rank
    that fails raises its error; rank 0 then raises an `EmbedJobError` naming every failed part (nothing is merged;
    the finished parts stay for the rerun)."""
    import torch.distributed as dist

    from .engine.distributed import dist_info, process_group

    info = dist_info()
    if job.get("num_workers") is None and embedder.device.type == "cpu":  # the node's cores shared by its ranks
        local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        job["num_workers"] = max(1, len(os.sched_getaffinity(0)) // local_ranks)
    with process_group("cpu", timeout=MERGE_WAIT):
        error: BaseException | None = None
        try:
            summary = embed_part(embedder, paths, out, info.rank, info.world_size, **job)
        except Exception as err:  # noqa: BLE001 -- reported to rank 0, then raised here
            error = err
        problems: list[str] = [""] * info.world_size
        dist.all_gather_object(problems, "" if error is None else (str(error) or type(error).__name__).splitlines()[0])
    failed = [f"part {k}/{info.world_size}: {p}" for k, p in enumerate(problems) if p]
    if info.rank == 0 and failed:
        raise EmbedJobError(f"not merged, {len(failed)} of {info.world_size} parts failed: {'; '.join(failed)}")
    if error is not None:
        raise error
    return merge_parts(out, count=info.world_size) if info.rank == 0 else summary
