"""Reports: results.csv (one row per task and embedder), results.md (tasks × embedders with the average),
results.json (everything incl. warnings) and a confusion-matrix PNG per single-label task and embedder."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

CSV_COLUMNS = ("task", "metric", "score", "std", "n_train", "n_test", "checkpoint", "seed_count", "lr", "label",
               "probe", "hyper_name", "hyper", "n_valid", "n_folds", "n_classes", "unit_sec", "valid_score",
               "lr_grid", "seed_scores", "wall_sec", "cache_hits", "warnings")


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.6g}"
    if isinstance(x, list):
        return ";".join(_fmt(v) for v in x)
    return "" if x is None else str(x)


def write_results_csv(results: Sequence, path: Path) -> None:
    """results.csv; ``score``/``std`` in percent, ``n_train``/``n_valid`` per fold (mean), ``n_test`` summed."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in results:
            row = r.row()
            writer.writerow({c: _fmt(row[c]) for c in CSV_COLUMNS})


def markdown_table(results: Sequence) -> str:
    """Tasks as rows, embedders as columns (``score ± std``), the unweighted average over tasks last."""
    labels = list(dict.fromkeys(r.label or r.checkpoint for r in results))
    tasks = list(dict.fromkeys(r.task for r in results))
    cell = {(r.task, r.label or r.checkpoint): r for r in results}
    lines = ["| task | metric | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
    for t in tasks:
        metric = next(r.metric for r in results if r.task == t)
        row = [f"{cell[t, l].score:.2f} ± {cell[t, l].std:.2f}" if (t, l) in cell else "" for l in labels]
        lines.append(f"| {t} | {metric} | " + " | ".join(row) + " |")
    avg = []
    for l in labels:
        scores = [cell[t, l].score for t in tasks if (t, l) in cell]
        avg.append(f"{np.mean(scores):.2f}" + ("" if len(scores) == len(tasks) else f" ({len(scores)} tasks)"))
    lines.append("| **average** | | " + " | ".join(avg) + " |")
    return "\n".join(lines)


def details_markdown(results: Sequence) -> str:
    """Per result: probe, chosen hyper-parameter, sizes, seeds, wall time, cache use and warnings."""
    lines = ["| task | embedder | probe | chosen | n_train | n_valid | n_test | seeds | wall s | cached folds |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.task} | {r.label or r.checkpoint} | {r.probe} | {r.hyper_name}={r.hyper:g} | "
                     f"{r.n_train} | {r.n_valid} | {r.n_test} | {r.seed_count} | {r.wall_sec:.1f} | "
                     f"{r.cache_hits}/{r.n_folds} |")
    warned = [r for r in results if r.warnings]
    if warned:
        lines += ["", "Warnings (handled, results computed as stated):", ""]
        for r in warned:
            lines += [f"- {r.task} / {r.label or r.checkpoint}: " + "; ".join(r.warnings)]
    return "\n".join(lines)


def plot_confusion(result, path: Path) -> bool:
    """Confusion matrix (rows: true class, columns: predicted; row-normalized) of the first seed's test
    predictions over all folds; returns False for multi-label tasks, which have none."""
    if not result.y_true:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import confusion_matrix

    n = len(result.classes)
    cm = confusion_matrix(result.y_true, result.y_pred, labels=list(range(n))).astype(float)
    cm /= np.maximum(cm.sum(axis=1, keepdims=True), 1)
    size = min(4 + 0.25 * n, 30)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    if n <= 60:
        ax.set_xticks(range(n), result.classes, rotation=90, fontsize=7)
        ax.set_yticks(range(n), result.classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{result.task} — {result.label or result.checkpoint}\n{result.metric} {result.score:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write_report(results: Sequence, out_dir: str | Path, plot: Sequence | None = None) -> None:
    """Write results.csv, results.md, results.json and confusion/<embedder>/<task>.png under ``out_dir``
    (pictures for ``plot``, default all results)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_results_csv(results, out / "results.csv")
    (out / "results.md").write_text("# Evaluation results\n\nScores in % (mean ± std over seeds).\n\n"
                                    + markdown_table(results) + "\n\n" + details_markdown(results) + "\n")
    (out / "results.json").write_text(json.dumps([r.row() for r in results], indent=1))
    for r in results if plot is None else plot:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", r.label or r.checkpoint)[:60]
        path = out / "confusion" / name / f"{r.task}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(r, path)
