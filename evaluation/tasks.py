"""Tasks as data: an EVAR-style metadata CSV plus a small spec (name, unit_sec, metric).

CSV format: columns ``file_name,label`` plus either ``split`` (train/valid/test) or an integer ``fold``;
a comma-separated ``label`` is a multi-label row; other columns are ignored; ``file_name`` is relative to the
CSV's folder (absolute paths are accepted too). Built-in specs live in ``tasks/*.yaml``; their ``csv`` is
relative to a data root (``data_root`` argument, else ``$BYOLA_DATA``, else ``./data``).
"""
from __future__ import annotations

import csv
import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from byola.errors import UsageError

METRICS = ("accuracy", "mAP")
DEFAULT_UNIT_SEC = 1.0  # clip duration of a task CSV given without one (built-in tasks state theirs)
SPLITS = ("train", "valid", "test")
SPEC_DIR = Path(__file__).with_name("tasks")


class TaskError(UsageError):
    """A task's spec or metadata CSV is unusable; the message says why."""


@dataclass(frozen=True)
class TaskSpec:
    """What a task is besides its CSV: clip duration, metric, expected class count."""

    name: str
    csv: str
    unit_sec: float
    metric: str = "accuracy"
    n_classes: int | None = None
    classes: list[str] | None = None
    prepare: str | None = None
    description: str = ""


def builtin_specs() -> dict[str, TaskSpec]:
    """All specs shipped in ``evaluation/tasks/*.yaml``, by name."""
    specs = {}
    for path in sorted(SPEC_DIR.glob("*.yaml")):
        spec = TaskSpec(**yaml.safe_load(path.read_text()))
        specs[spec.name] = spec
    return specs


@dataclass
class Fold:
    """Indices into a task's rows for one train/valid/test arrangement, with what had to be worked around."""

    name: str
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray
    warnings: list[str] = field(default_factory=list)


@dataclass
class Task:
    """A loaded, validated task: absolute file paths, label sets, class list and split/fold assignment."""

    name: str
    csv_path: Path
    unit_sec: float
    metric: str
    files: list[Path]
    labels: list[tuple[str, ...]]
    classes: list[str]
    split: np.ndarray | None = None
    fold: np.ndarray | None = None

    @property
    def multilabel(self) -> bool:
        return self.metric == "mAP"

    def __len__(self) -> int:
        return len(self.files)

    @property
    def fingerprint(self) -> str:
        """sha1 of the CSV bytes (identifies the task's content for caching)."""
        return hashlib.sha1(self.csv_path.read_bytes()).hexdigest()

    def targets(self) -> np.ndarray:
        """Class indices ``[N]`` (single-label) or a multi-hot float32 matrix ``[N, C]`` (multi-label)."""
        index = {c: i for i, c in enumerate(self.classes)}
        if not self.multilabel:
            return np.array([index[l[0]] for l in self.labels], dtype=np.int64)
        y = np.zeros((len(self.labels), len(self.classes)), dtype=np.float32)
        for row, labels in enumerate(self.labels):
            y[row, [index[l] for l in labels]] = 1.0
        return y

    def folds(self, valid_fraction: float = 0.1, seed: int = 0) -> list[Fold]:
        """Split tasks: one fold (a missing ``valid`` split is carved from train). Fold tasks: leave-one-fold-out,
        validation = a stratified ``valid_fraction`` of the training folds (``seed`` fixes the draw)."""
        y = self.targets()
        rng = np.random.default_rng(seed)
        if self.split is not None:
            idx = {s: np.flatnonzero(self.split == s) for s in SPLITS}
            if len(idx["valid"]):
                return [Fold("split", idx["train"], idx["valid"], idx["test"])]
            train, valid, warnings = stratified_holdout(idx["train"], y, valid_fraction, rng, self.classes)
            return [Fold("split", train, valid, idx["test"], ["no valid split in CSV: " + _frac(valid_fraction)
                                                              + " of train held out"] + warnings)]
        folds = []
        for k in np.unique(self.fold):
            pool = np.flatnonzero(self.fold != k)
            train, valid, warnings = stratified_holdout(pool, y, valid_fraction, rng, self.classes)
            folds.append(Fold(f"fold{k}", train, valid, np.flatnonzero(self.fold == k), warnings))
        return folds


def _frac(x: float) -> str:
    return f"{100 * x:g}%"


def stratified_holdout(pool: np.ndarray, y: np.ndarray, fraction: float, rng: np.random.Generator,
                       classes: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Hold out ``fraction`` of ``pool`` as validation, stratified by class, never taking a class's last example.

    Written here rather than with sklearn's ``train_test_split(stratify=...)`` because that raises when the
    validation set cannot hold every class or a class has a single example; here both cases are handled
    (per-class largest-remainder allocation) and reported. Multi-label targets get a plain random split.
    """
    warnings: list[str] = []
    n_valid = max(1, int(round(fraction * len(pool)))) if len(pool) > 1 else 0
    if y.ndim == 2:
        perm = rng.permutation(pool)
        warnings.append("multi-label task: validation split is random, not stratified")
        return np.sort(perm[n_valid:]), np.sort(perm[:n_valid]), warnings
    labels = y[pool]
    present, counts = np.unique(labels, return_counts=True)
    available = counts - 1  # keep at least one example of every class in train
    quota = fraction * counts
    take = np.minimum(np.floor(quota).astype(int), available)
    rest = n_valid - take.sum()
    order = np.argsort(-(quota - take) + 1e-9 * rng.random(len(quota)), kind="stable")
    for i in order:  # largest remainder first, as long as a class can spare an example
        if rest <= 0:
            break
        if take[i] < available[i]:
            take[i] += 1
            rest -= 1
    valid_parts = [rng.permutation(pool[labels == c])[:t] for c, t in zip(present, take)]
    valid = np.sort(np.concatenate(valid_parts)) if valid_parts else np.array([], dtype=np.int64)
    train = np.setdiff1d(pool, valid)
    singles = [classes[c] for c, n in zip(present, counts) if n == 1]
    if singles:
        warnings.append(f"{len(singles)} class(es) with a single training example kept out of validation: "
                        + ", ".join(singles[:10]) + ("..." if len(singles) > 10 else ""))
    missing = int((take == 0).sum())
    if missing:
        warnings.append(f"validation holds {len(present) - missing} of {len(present)} training classes "
                        f"({len(valid)} clips)")
    return train, valid, warnings


def _data_root(data_root: str | os.PathLike | None) -> Path:
    return Path(data_root or os.environ.get("BYOLA_DATA", "data"))


def load_task(name_or_csv: str | os.PathLike, unit_sec: float | None = None, metric: str | None = None,
              data_root: str | os.PathLike | None = None, check_files: bool = True) -> Task:
    """Load a built-in task by name or any EVAR-style CSV; ``unit_sec``/``metric`` override the spec.

    A bare CSV gets ``unit_sec`` ``DEFAULT_UNIT_SEC`` (said in one line on stderr) and metric ``mAP`` if any row is
    multi-label else ``accuracy`` unless given.
    Raises ``TaskError`` for missing columns, missing audio files (listed), bad split/fold values, empty labels,
    labels outside the spec's ``classes``, multi-label rows under ``accuracy``, a class count that differs from
    the spec, or a split without train/test.
    """
    specs = builtin_specs()
    key = str(name_or_csv)
    if key in specs:
        spec = specs[key]
        csv_path = _data_root(data_root) / spec.csv
        if not csv_path.exists():
            hint = f"; run `byola prepare {spec.prepare} SRC {csv_path.parent}`" if spec.prepare else ""
            raise TaskError(f"task {key!r}: metadata CSV not found at {csv_path} (data root: set --data_root "
                            f"(data_root= in Python) or $BYOLA_DATA){hint}")
    else:
        csv_path = Path(key)
        if csv_path.suffix.lower() != ".csv" or not csv_path.exists():
            raise TaskError(f"{key!r} is neither a built-in task ({', '.join(sorted(specs))}) nor an existing CSV")
        spec = None
    rows = _read_rows(csv_path)
    labels = [tuple(l.strip() for l in row["label"].split(",")) for row in rows]
    multi = any(len(l) > 1 for l in labels)
    metric = metric or (spec.metric if spec else ("mAP" if multi else "accuracy"))
    if metric not in METRICS:
        raise TaskError(f"{csv_path}: metric must be one of {METRICS}, got {metric!r}")
    if multi and metric != "mAP":
        raise TaskError(f"{csv_path}: multi-label rows (comma-separated labels) need metric 'mAP'")
    empty = [i + 2 for i, l in enumerate(labels) if any(not x for x in l)]
    if empty:
        raise TaskError(f"{csv_path}: empty label on line(s) {empty[:10]}")
    classes = sorted({c for l in labels for c in l})
    if spec and spec.classes:
        unknown = sorted(set(classes) - {str(c) for c in spec.classes})
        if unknown:
            raise TaskError(f"{csv_path}: unknown label(s) for task {spec.name!r}: {unknown[:10]}"
                            + ("..." if len(unknown) > 10 else ""))
    if spec and spec.n_classes and len(classes) != spec.n_classes:
        raise TaskError(f"{csv_path}: task {spec.name!r} expects {spec.n_classes} classes, the CSV has "
                        f"{len(classes)}")
    unit = float(unit_sec if unit_sec is not None else (spec.unit_sec if spec else DEFAULT_UNIT_SEC))
    if unit <= 0:
        raise TaskError(f"unit_sec must be positive, got {unit}")
    files = [(csv_path.parent / row["file_name"]) for row in rows]
    if check_files:
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise TaskError(f"{csv_path}: {len(missing)} of {len(files)} audio files are missing, e.g.:\n  "
                            + "\n  ".join(missing[:10]))
    split = fold = None
    if "split" in rows[0]:
        split = np.array([row["split"].strip() for row in rows])
        bad = sorted(set(split.tolist()) - set(SPLITS))
        if bad:
            raise TaskError(f"{csv_path}: unknown split value(s) {', '.join(map(repr, bad))}; expected "
                            f"{', '.join(SPLITS)}")
        for s in ("train", "test"):
            if not (split == s).any():
                raise TaskError(f"{csv_path}: no {s!r} rows")
    else:
        try:
            fold = np.array([int(row["fold"]) for row in rows])
        except ValueError as e:
            raise TaskError(f"{csv_path}: 'fold' must be an integer: {e}") from None
        if len(np.unique(fold)) < 2:
            raise TaskError(f"{csv_path}: a fold task needs at least two folds")
    name = spec.name if spec else csv_path.stem
    if unit_sec is None and spec is None:
        print(f"{csv_path.name}: clips cut/padded to {DEFAULT_UNIT_SEC:g} s, the default for a task CSV "
              "(--unit_sec to change)", file=sys.stderr)
    return Task(name, csv_path.resolve(), unit, metric, files, labels, classes, split, fold)


def _read_rows(csv_path: Path) -> list[dict[str, str]]:
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = sorted({"file_name", "label"} - set(columns))
        if not {"split", "fold"} & set(columns):
            missing.append("split or fold")
        if missing:
            raise TaskError(f"{csv_path}: missing column(s) {missing}; found {columns}")
        rows = list(reader)
    if not rows:
        raise TaskError(f"{csv_path}: no rows")
    return rows
