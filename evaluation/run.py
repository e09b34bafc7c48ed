"""The evaluation protocol for one task, and ``evaluate`` over tasks and embedders.

Per task and fold: every clip is cropped or zero-padded to ``unit_sec`` (train/valid clips at a random offset drawn
once per clip from ``crop_seed``, test clips from the start); the embedder's normalization statistics are computed
exactly from that fold's (cropped) training clips; all clips are embedded once into a memory-mapped ``.npy``
cache keyed by (embedder name, task content, unit_sec, crop seed, fold roles), written atomically with its size
and SHA-256 beside it, and reused on rerun only if it still matches them (a truncated or foreign file is reported
and recomputed); then the probe runs over the grid and the seeds (see ``probe``), the grid value is chosen on
validation, and the task score is the mean ± std over seeds of the fold-averaged test score.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from byola.files import atomic_write_text, commit, file_sha256, new_temp
from byola.provenance import environment, file_record, utc_now

from .embedders import ClipEmbedder, EmbedderFactory
from .probe import ProbeConfig, Trial, choose, make_fold_data, run_trials
from .tasks import Fold, Task, TaskError, load_task

AudioLoader = Callable[[Path, int], torch.Tensor]


def default_audio_loader(path: Path, sample_rate: int) -> torch.Tensor:
    """byola's decoder (soundfile, mono, resampled): ``byola.audio.load_audio``."""
    from byola.audio import load_audio

    return load_audio(path, sample_rate=sample_rate)


def crop_or_pad(wave: torch.Tensor, length: int, offset_fraction: float | None) -> torch.Tensor:
    """``length`` samples of a 1-D wave: from the start (``offset_fraction`` None) or at offset
    ``floor(offset_fraction * (len - length + 1))``; shorter waves are zero-padded at the end."""
    from byola.audio import crop_or_pad as shared_crop_or_pad

    excess = wave.shape[-1] - length
    start = 0 if offset_fraction is None or excess < 0 else int(offset_fraction * (excess + 1))
    return shared_crop_or_pad(wave, length, start)


class ClipDataset(Dataset):
    """Decoded, cropped clips of a task's rows (``offsets[i]`` None = from the start)."""

    def __init__(self, files: Sequence[Path], rows: np.ndarray, offsets: Sequence[float | None], length: int,
                 sample_rate: int, loader: AudioLoader):
        self.files, self.rows, self.offsets = files, rows, offsets
        self.length, self.sample_rate, self.loader = length, sample_rate, loader

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> torch.Tensor | str:
        """The cropped clip, or the decoding error's one-line message (raised by `clip_batches` in the caller's
        process: from a DataLoader worker an exception would come back as a multi-line RuntimeError)."""
        from byola.audio import AudioError

        row = self.rows[i]
        try:
            wave = self.loader(self.files[row], self.sample_rate)
        except AudioError as err:
            return str(err)
        return crop_or_pad(wave.float(), self.length, self.offsets[row])


def _stack_or_error(items: list[torch.Tensor | str]) -> torch.Tensor | str:
    """A batch of clips, or the first decoding error among them."""
    error = next((item for item in items if isinstance(item, str)), None)
    return error if error is not None else torch.stack(items)


def clip_batches(task: Task, dataset: ClipDataset, batch_size: int, num_workers: int) -> Iterator[torch.Tensor]:
    """Batches of ``dataset``'s clips; a clip that cannot be decoded raises a one-line `TaskError` naming it."""
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_stack_or_error):
        if isinstance(batch, str):
            raise TaskError(f"task {task.name}: {batch}", "fix or remove that row of the task CSV")
        yield batch


@dataclass
class TaskResult:
    """One task scored with one embedder; ``score``/``std`` in percent (accuracy or mAP)."""

    task: str
    metric: str
    score: float
    std: float
    n_train: int
    n_valid: int
    n_test: int
    checkpoint: str
    seed_count: int
    lr: float | None
    probe: str
    hyper_name: str
    hyper: float
    n_folds: int
    n_classes: int
    unit_sec: float
    seed_scores: list[float]
    valid_score: float
    lr_grid: list[float]
    wall_sec: float
    cache_hits: int
    label: str = ""
    warnings: list[str] = field(default_factory=list)
    classes: list[str] = field(default_factory=list, repr=False)
    y_true: list[int] = field(default_factory=list, repr=False)
    y_pred: list[int] = field(default_factory=list, repr=False)

    def row(self) -> dict:
        """The results.csv row (no per-clip data)."""
        return {k: v for k, v in asdict(self).items() if k not in ("classes", "y_true", "y_pred")}


def _slug(text: str, n: int = 48) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:n].strip("_") or "embedder"


def _digest(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def embed_fold(task: Task, fold: Fold, embedder: ClipEmbedder, cache_dir: Path, *, crop_seed: int = 0,
               batch_size: int = 64, num_workers: int = 0, audio_loader: AudioLoader | None = None,
               progress: bool = True, label: str | None = None) -> tuple[np.ndarray, dict, bool]:
    """Embeddings ``[N, D]`` of all the task's clips as this fold crops them (read-only memmap), the cache
    metadata (incl. normalization stats) and whether the cache was reused. ``label`` names the embedder on the
    progress bar (default its ``name``, which may be a long cache identity).

    The cache file is written through ``np.lib.format.open_memmap`` batch by batch, so no more than one batch is
    held in RAM, under a temporary name that is renamed into place only once complete.
    """
    loader = audio_loader or default_audio_loader
    sr = embedder.sample_rate
    length = int(round(task.unit_sec * sr))
    key_fields = {"embedder": embedder.name, "task": task.name, "csv": task.fingerprint, "unit_sec": task.unit_sec,
                  "sample_rate": sr, "crop_seed": crop_seed, "fold": fold.name,
                  "roles": [_digest(fold.train.tolist()), _digest(fold.valid.tolist()), _digest(fold.test.tolist())]}
    key = _digest(key_fields)
    path = Path(cache_dir) / _slug(task.name) / f"{_slug(embedder.name)}-{fold.name}-{key[:16]}.npy"
    meta_path = path.with_suffix(".json")
    cached, problem = _read_cache(path, meta_path, key, len(task))
    if cached is not None:
        return cached[0], cached[1], True
    if problem:
        warnings.warn(f"embedding cache {path} not used ({problem}): recomputing it", stacklevel=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fractions = np.random.default_rng(crop_seed).random(len(task))
    offsets: list[float | None] = [float(f) for f in fractions]
    for i in fold.test:
        offsets[i] = None

    def batches(rows: np.ndarray) -> Iterator[torch.Tensor]:
        return clip_batches(task, ClipDataset(task.files, rows, offsets, length, sr, loader), batch_size, num_workers)

    def train_clips() -> Iterator[torch.Tensor]:
        for batch in batches(fold.train):
            yield from batch

    stats = embedder.fit_norm(train_clips())
    meta = {"key": key, **key_fields, "norm_stats": stats, "n": len(task)}
    # The array goes to an exclusively created temporary file, renamed into place once complete; the metadata
    # (key, size, SHA-256 of the array) is written last and vouches for it (`_read_cache`).
    tmp = new_temp(path)
    array = None
    start = 0
    try:
        shown = f"{label or embedder.name} {task.name} {fold.name}: embed"
        for batch in tqdm(batches(np.arange(len(task))), desc=shown, unit="batch", disable=not progress, leave=False):
            emb = embedder.embed_clips(batch).detach().float().cpu().numpy()
            if array is None:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                                  shape=(len(task), emb.shape[1]))
            array[start:start + len(emb)] = emb
            start += len(emb)
        array.flush()
        meta["dim"] = int(array.shape[1])
        del array
        meta_path.unlink(missing_ok=True)
        commit(tmp, path)
        meta["bytes"], meta["sha256"] = path.stat().st_size, file_sha256(path)
        atomic_write_text(meta_path, json.dumps(meta, indent=1, default=str))
    finally:
        Path(tmp).unlink(missing_ok=True)
    return np.load(path, mmap_mode="r"), meta, False


def _read_cache(path: Path, meta_path: Path, key: str, n: int) -> tuple[tuple[np.ndarray, dict] | None, str]:
    """``((embeddings memmap, meta), "")`` for a complete cache entry of ``key``, else ``(None, why not)`` ("" when
    there is none): the metadata must name the key, the array's size and SHA-256, and the array must be
    float32 ``[n, dim]``."""
    if not path.exists() and not meta_path.exists():
        return None, ""
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("key") != key:
            return None, "its metadata belongs to other settings"
        if path.stat().st_size != meta.get("bytes"):
            return None, f"{path.stat().st_size} bytes, expected {meta.get('bytes')} (truncated or replaced)"
        if file_sha256(path) != meta.get("sha256"):
            return None, "its checksum does not match its metadata (modified or foreign file)"
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        return None, f"unreadable: {err}"
    if array.dtype != np.float32 or array.shape != (n, meta.get("dim")):
        return None, f"array {array.dtype} {array.shape}, expected float32 ({n}, {meta.get('dim')})"
    return (array, meta), ""


def run_task(task: Task, embedder: ClipEmbedder, cache_dir: str | os.PathLike, *, seeds: Sequence[int] = (0, 1, 2),
             probe: ProbeConfig = ProbeConfig(), crop_seed: int = 0, split_seed: int = 0,
             valid_fraction: float = 0.1, batch_size: int = 64, num_workers: int = 0,
             audio_loader: AudioLoader | None = None, progress: bool = True, label: str | None = None) -> TaskResult:
    """Score one task with one embedder (see the module docstring for the protocol); ``label`` names the embedder
    on the progress bars (default its ``name``)."""
    t0 = time.perf_counter()
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("at least one seed is needed")
    y = task.targets()
    folds = task.folds(valid_fraction, split_seed)
    warnings: list[str] = []
    per_fold: list[list[Trial]] = []
    hits = 0
    for fold in tqdm(folds, desc=f"{label or embedder.name} {task.name}", unit="fold",
                     disable=not progress or len(folds) == 1):
        emb, _, hit = embed_fold(task, fold, embedder, Path(cache_dir), crop_seed=crop_seed, batch_size=batch_size,
                                 num_workers=num_workers, audio_loader=audio_loader, progress=progress,
                                 label=label)
        hits += hit
        data = make_fold_data(emb[fold.train], y[fold.train], emb[fold.valid], y[fold.valid], emb[fold.test],
                              y[fold.test], task.classes, task.metric)
        per_fold.append(run_trials(data, probe, seeds, progress=progress))
        warnings += [f"{fold.name}: {w}" for w in fold.warnings + data.warnings]
    chosen = choose(per_fold)
    if len(probe.grid) >= 3 and chosen in (min(probe.grid), max(probe.grid)):
        warnings.append(f"chosen {probe.hyper_name}={chosen:g} is at the edge of the grid {list(probe.grid)}")
    used_seeds = seeds[:1] if probe.kind == "knn" else seeds
    picked: list[list[Trial]] = []
    for fold, trials in zip(folds, per_fold):
        match = [t for t in trials if t.hyper == chosen]
        if not match:
            warnings.append(f"{fold.name}: chosen {probe.hyper_name}={chosen} not run here; used {trials[0].hyper}")
            match = [t for t in trials if t.hyper == trials[0].hyper]
        picked.append(match)
    seed_scores = [100 * float(np.mean([next(t for t in m if t.seed == s).test_score for m in picked]))
                   for s in used_seeds]
    valid_score = 100 * float(np.nanmean([t.valid_score for m in picked for t in m] or [np.nan]))
    y_true = [int(v) for fold in folds for v in y[fold.test]] if not task.multilabel else []
    y_pred = [int(v) for m in picked for v in m[0].test_pred] if not task.multilabel else []
    return TaskResult(
        task=task.name, metric=task.metric, score=float(np.mean(seed_scores)),
        std=float(np.std(seed_scores, ddof=1)) if len(seed_scores) > 1 else 0.0,
        n_train=int(round(np.mean([len(f.train) for f in folds]))),
        n_valid=int(round(np.mean([len(f.valid) for f in folds]))),
        n_test=int(sum(len(f.test) for f in folds)), checkpoint=embedder.name, seed_count=len(used_seeds),
        lr=None if probe.kind == "knn" else float(chosen), probe=probe.kind, hyper_name=probe.hyper_name,
        hyper=float(chosen), n_folds=len(folds), n_classes=len(task.classes), unit_sec=task.unit_sec,
        seed_scores=seed_scores, valid_score=valid_score, lr_grid=[float(v) for v in probe.grid],
        wall_sec=time.perf_counter() - t0, cache_hits=hits, warnings=warnings, classes=list(task.classes),
        y_true=y_true, y_pred=y_pred)


def evaluate(tasks: Iterable[str | os.PathLike | Task], embedder_factory: EmbedderFactory | None,
             out_dir: str | os.PathLike, *, baselines: Mapping[str, EmbedderFactory] | None = None,
             data_root: str | os.PathLike | None = None, unit_sec: float | None = None, metric: str | None = None,
             seeds: Sequence[int] = (0, 1, 2), probe: str | ProbeConfig = "linear",
             cache_dir: str | os.PathLike | None = None, crop_seed: int = 0, split_seed: int = 0,
             valid_fraction: float = 0.1, batch_size: int = 64, num_workers: int = 0,
             audio_loader: AudioLoader | None = None, progress: bool = True,
             command: str | None = None) -> list[TaskResult]:
    """Score every task with the embedder from ``embedder_factory`` and each of ``baselines`` (label → factory;
    the main embedder is labelled by its ``name``), writing ``out_dir``/results.csv, results.md, results.json,
    provenance.json and confusion/<label>/<task>.png after each task.

    Tasks are built-in names or CSV paths (``unit_sec``/``metric`` override their spec). Embedding caches go to
    ``cache_dir`` (default ``out_dir/cache``). Returns the results in order (embedder-major).

    provenance.json (:func:`provenance_record`; ``command``: the command line, when run from one) describes the
    run that wrote the results beside it: a rerun into the same folder rewrites both, so they always belong
    together (``finished`` is null until the last task is scored). Embeddings a rerun takes from the cache
    (``cache_hits`` in results.csv) were computed by an earlier run with the same cache key: the same embedder
    ``name`` (a checkpoint's content hash), task CSV content, ``unit_sec``, crop seed and folds.
    """
    from .report import write_provenance, write_report

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    loaded = [t if isinstance(t, Task) else load_task(t, unit_sec, metric, data_root) for t in tasks]
    if not loaded:
        raise ValueError("no tasks given")
    cfg = probe if isinstance(probe, ProbeConfig) else ProbeConfig(kind=probe)
    factories = ([(None, embedder_factory)] if embedder_factory is not None else []) + list((baselines or {}).items())
    if not factories:
        raise ValueError("nothing to evaluate: give an embedder_factory and/or baselines")
    cache = Path(cache_dir or out / "cache")
    record = provenance_record(loaded, command, seeds=seeds, probe=cfg, cache_dir=cache, crop_seed=crop_seed,
                               split_seed=split_seed, valid_fraction=valid_fraction, batch_size=batch_size,
                               num_workers=num_workers, audio_loader=audio_loader)
    results: list[TaskResult] = []
    for label, factory in factories:
        embedder = factory()
        describe = getattr(embedder, "provenance", None)  # optional (ClipEmbedder)
        record["embedders"].append({"label": label or embedder.name, "name": embedder.name,
                                    **(describe() if describe else {})})
        for task in loaded:
            result = run_task(task, embedder, cache, seeds=seeds, probe=cfg, crop_seed=crop_seed,
                              split_seed=split_seed, valid_fraction=valid_fraction,
                              batch_size=batch_size, num_workers=num_workers, audio_loader=audio_loader,
                              progress=progress, label=label or embedder.name)
            result.label = label or embedder.name
            results.append(result)
            write_report(results, out, plot=[result], provenance=record)
    record["finished"] = utc_now()
    write_provenance(record, out)
    return results


def provenance_record(tasks: Sequence[Task], command: str | None = None, *, seeds: Sequence[int],
                      probe: ProbeConfig, cache_dir: Path, audio_loader: AudioLoader | None, **settings) -> dict:
    """What provenance.json records of an evaluation (json-able): ``command`` (None when run from Python),
    ``started``/``finished`` (UTC; ``finished`` None until set), ``environment``
    (:func:`byola.provenance.environment`), ``settings`` (seeds, the probe's configuration, the cache folder, the
    audio loader and ``settings``: crop/split seeds, validation fraction, batch size, workers), ``tasks`` (name,
    the CSV's path and SHA-256, unit_sec, metric, clip and class counts) and ``embedders`` (empty: ``evaluate``
    adds each as it is made: label, name and its ``provenance()``)."""
    loader = audio_loader or default_audio_loader
    loader_name = getattr(loader, "__qualname__", None)
    return {
        "command": command, "started": utc_now(), "finished": None, "environment": environment(),
        "settings": {"seeds": [int(s) for s in seeds], "probe": asdict(probe), **settings,
                     "cache_dir": str(cache_dir.absolute()),
                     "audio_loader": f"{loader.__module__}.{loader_name}" if loader_name else repr(loader)},
        "tasks": [{"name": t.name, "csv": file_record(t.csv_path), "unit_sec": t.unit_sec, "metric": t.metric,
                   "clips": len(t), "classes": len(t.classes)} for t in tasks],
        "embedders": [],
    }
