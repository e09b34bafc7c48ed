"""Reports: results.csv (one row per task and embedder), results.md (a GitHub table: tasks × embedders with the
average, details, and how to reproduce it), results.json (everything, incl. warnings and the test predictions:
`redraw` makes the pictures again from it), provenance.json (environment, command line, settings, checkpoint and
task CSV SHA-256s), scores.png (bar chart of every embedder per task) and a confusion-matrix PNG per single-label
task and embedder."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from byola.errors import UsageError
from byola.files import atomic_write_text, atomic_writer
from byola.plots import save_figure

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
    with atomic_writer(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in results:
            row = r.row()
            writer.writerow({c: _fmt(row[c]) for c in CSV_COLUMNS})


def _cell(text: str) -> str:
    """Text safe inside a GitHub table cell: ``|`` escaped, no line breaks."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _score(r) -> str:
    """``score ± std``, or the score alone for a single seed (no std to report)."""
    return f"{r.score:.2f}" if r.seed_count <= 1 else f"{r.score:.2f} ± {r.std:.2f}"


def markdown_table(results: Sequence) -> str:
    """Tasks as rows, embedders as columns (``score ± std``), the unweighted average over tasks last."""
    labels = list(dict.fromkeys(r.label or r.checkpoint for r in results))
    tasks = list(dict.fromkeys(r.task for r in results))
    cell = {(r.task, r.label or r.checkpoint): r for r in results}
    lines = ["| task | metric | " + " | ".join(map(_cell, labels)) + " |", "|---|---|" + "---:|" * len(labels)]
    for t in tasks:
        metric = next(r.metric for r in results if r.task == t)
        row = [_score(cell[t, l]) if (t, l) in cell else "" for l in labels]
        lines.append(f"| {_cell(t)} | {metric} | " + " | ".join(row) + " |")
    avg = []
    for l in labels:
        scores = [cell[t, l].score for t in tasks if (t, l) in cell]
        avg.append(f"{np.mean(scores):.2f}" + ("" if len(scores) == len(tasks) else f" ({len(scores)} tasks)"))
    lines.append("| **average** | | " + " | ".join(avg) + " |")
    return "\n".join(lines)


def details_markdown(results: Sequence) -> str:
    """Per result: clip duration, probe, chosen hyper-parameter, sizes, seeds, wall time, cache use and warnings."""
    lines = ["| task | embedder | unit s | probe | chosen | n_train | n_valid | n_test | seeds | wall s "
             "| cached folds |",
             "|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {_cell(r.task)} | {_cell(r.label or r.checkpoint)} | {r.unit_sec:g} | {r.probe} | "
                     f"{r.hyper_name}={r.hyper:g} | {r.n_train} | {r.n_valid} | {r.n_test} | {r.seed_count} | "
                     f"{r.wall_sec:.1f} | {r.cache_hits}/{r.n_folds} |")
    warned = [r for r in results if r.warnings]
    if warned:
        lines += ["", "Warnings (handled, results computed as stated):", ""]
        for r in warned:
            lines += [f"- {r.task} / {r.label or r.checkpoint}: " + "; ".join(r.warnings)]
    return "\n".join(lines)


def _record(result) -> dict:
    """Everything results.json keeps of a result: the results.csv row plus classes and the first seed's test
    labels and predictions (what the confusion matrices are drawn from)."""
    return {**result.row(), "classes": list(result.classes), "y_true": list(result.y_true),
            "y_pred": list(result.y_pred)}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _name(record: dict) -> str:
    return record.get("label") or record["checkpoint"]


def confusion_title(record: dict) -> str:
    """The title of a confusion matrix: the task and embedder, then what the counts show (the first probe seed's
    test predictions: its own count and share correct) beside the score reported (the mean over seeds)."""
    y_true, y_pred = np.asarray(record["y_true"]), np.asarray(record["y_pred"])
    correct = int((y_true == y_pred).sum())
    seeds = record["seed_count"]
    reported = f"{record['metric']} {record['score']:.2f}%" + (f" (mean over {seeds} seeds)" if seeds > 1 else "")
    return (f"{record['task']}: {_name(record)}\n{reported}\nshown: "
            f"{'the first seed, ' if seeds > 1 else ''}{correct} of {len(y_true)} test clips correct "
            f"({100 * correct / max(len(y_true), 1):.2f}%)")


def plot_confusion(record: dict, path: Path) -> bool:
    """Confusion matrix of the first seed's test predictions over all folds (rows: true class, columns:
    predicted): colour = fraction of the true class (colour bar), numbers = clip counts (up to 60 classes), class
    names up to 100 classes; the figure grows with the class count so that text keeps its size. Returns False for
    multi-label tasks."""
    if not record["y_true"]:
        return False
    plt = _pyplot()
    classes = record["classes"]
    n = len(classes)
    counts = np.zeros((n, n), dtype=int)
    np.add.at(counts, (np.asarray(record["y_true"]), np.asarray(record["y_pred"])), 1)
    fraction = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = float(np.clip(2.5 + 0.34 * n, 5, 36))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(fraction, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="fraction of the true class")
    font = 9 if n <= 20 else 7
    if n <= 100:
        ax.set_xticks(range(n), classes, rotation=90, fontsize=font)
        ax.set_yticks(range(n), classes, fontsize=font)
    if n <= 60:
        for i, j in zip(*np.nonzero(counts)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=font,
                    color="white" if fraction[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(confusion_title(record), fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return True


def plot_scores(records: Sequence[dict], path: Path) -> None:
    """Bar chart: one group per task, one bar per embedder (model first, then baselines), with the std over
    seeds as error bars when there are several seeds, and the score written on each bar."""
    plt = _pyplot()
    labels = list(dict.fromkeys(_name(r) for r in records))
    tasks = list(dict.fromkeys(r["task"] for r in records))
    cell = {(r["task"], _name(r)): r for r in records}
    width = min(0.8 / len(labels), 0.3)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + len(tasks) * (0.9 + 0.55 * len(labels))), 4.8))
    colours = plt.get_cmap("tab10").colors
    for k, label in enumerate(labels):
        xs = [i + (k - (len(labels) - 1) / 2) * width for i, t in enumerate(tasks) if (t, label) in cell]
        rs = [cell[t, label] for t in tasks if (t, label) in cell]
        errors = [r["std"] if r["seed_count"] > 1 else 0.0 for r in rs]
        short = label if len(label) <= 48 else label[:45] + "..."
        bars = ax.bar(xs, [r["score"] for r in rs], width * 0.92, yerr=errors if any(errors) else None, capsize=3,
                      label=short,
                      color=colours[k % len(colours)])
        ax.bar_label(bars, labels=[f"{r['score']:.1f}" for r in rs], padding=2, fontsize=8)
    metrics = {t: next(r["metric"] for r in records if r["task"] == t) for t in tasks}
    ax.set_xticks(range(len(tasks)), [f"{t}\n({metrics[t]})" for t in tasks])
    ax.set_xlim(-0.6, len(tasks) - 0.4)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, min(100, max(r["score"] + r["std"] for r in records)) + 9)  # room for the labels above 100
    ax.set_yticks(range(0, 101, 20))
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    seeds = max(r["seed_count"] for r in records)
    probes = "/".join(dict.fromkeys(r["probe"] for r in records))
    ax.set_title(f"{probes}-probe scores" + (f" (mean ± std over {seeds} seeds)" if seeds > 1 else " (one seed)"),
                 fontsize=10)
    ncol = 1 if max(map(len, labels)) > 30 else min(3, len(labels))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=ncol, frameon=False)
    fig.tight_layout()
    save_figure(fig, path, dpi=100, bbox_inches="tight")  # "tight" keeps the legend below the axes in the picture
    plt.close(fig)


def _confusion_path(out: Path, record: dict) -> Path:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", _name(record))[:60]
    return out / "confusion" / name / f"{record['task']}.png"


def reproduce_markdown(provenance: dict) -> str:
    """results.md's last section: the command line (when known), byola/torch/Python versions and the hardware,
    and each checkpoint's SHA-256; provenance.json holds the rest."""
    env = provenance["environment"]
    command = provenance["command"]
    lines = ["## Reproduce", ""]
    lines += ["```sh", command, "```", ""] if command else ["Run from Python (`byola.evaluation.evaluate`).", ""]
    gpus = f" with {', '.join(env['gpus'])}" if env["gpus"] else ""
    lines.append(f"byola {env['byola_version']}, torch {env['torch_version']}, Python {env['python_version']} on "
                 f"{env['cpu']}{gpus}. Settings, library versions and the task CSVs' SHA-256: provenance.json.")
    checkpoints = [e for e in provenance["embedders"] if "checkpoint" in e]
    if checkpoints:
        lines += ["", "| embedder | checkpoint | SHA-256 |", "|---|---|---|"]
        lines += [f"| {_cell(e['label'])} | {_cell(e['checkpoint']['path'])} | `{e['checkpoint']['sha256']}` |"
                  for e in checkpoints]
    return "\n".join(lines)


def write_provenance(provenance: dict, out_dir: str | Path) -> None:
    """``out_dir``/provenance.json (``evaluation.run.provenance_record``)."""
    atomic_write_text(Path(out_dir) / "provenance.json", json.dumps(provenance, indent=1))


def write_report(results: Sequence, out_dir: str | Path, plot: Sequence | None = None,
                 provenance: dict | None = None) -> None:
    """Write results.csv, results.md, results.json, scores.png and confusion/<embedder>/<task>.png under
    ``out_dir`` (confusion matrices for ``plot``, default all results); with ``provenance``, also provenance.json
    and a "Reproduce" section at the end of results.md."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_results_csv(results, out / "results.csv")
    seeds = max(r.seed_count for r in results)
    spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one probe seed"
    reproduce = "" if provenance is None else "\n" + reproduce_markdown(provenance) + "\n"
    atomic_write_text(out / "results.md", f"# Evaluation results\n\nScores in % ({spread}).\n\n"
                      + markdown_table(results) + "\n\n" + details_markdown(results) + "\n" + reproduce)
    records = [_record(r) for r in results]
    atomic_write_text(out / "results.json", json.dumps(records, indent=1))
    if provenance is not None:
        write_provenance(provenance, out)
    plot_scores(records, out / "scores.png")
    for r in results if plot is None else plot:
        path = _confusion_path(out, _record(r))
        path.parent.mkdir(parents=True, exist_ok=True)
        plot_confusion(_record(r), path)


def redraw(out_dir: str | Path) -> list[Path]:
    """Draw scores.png and every confusion matrix again from ``out_dir``/results.json; returns the files."""
    out = Path(out_dir)
    records = json.loads((out / "results.json").read_text())
    if not records:
        raise UsageError(f"{out / 'results.json'} holds no results yet", "plot it after its first task is scored")
    plot_scores(records, out / "scores.png")
    written = [out / "scores.png"]
    for record in records:
        path = _confusion_path(out, record)
        path.parent.mkdir(parents=True, exist_ok=True)
        if plot_confusion(record, path):
            written.append(path)
    return written
