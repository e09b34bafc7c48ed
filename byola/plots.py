"""curves.png of a pretraining run, drawn from its log.csv (matplotlib, imported on use).

Panels, each drawn when the log has its columns: loss (every logged loss term; raw per step and a moving average),
EMA decay τ, learning rate, the batch of views before and after post-normalization (mean and std), and the
pre-normalized log-mel batch (``lms_mean``, ``lms_std``: should stay near 0 and 1).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from .errors import UsageError
from .files import atomic_writer

# (title, [(column, legend label, line style)]) per panel.
_PANELS = [
    ("EMA decay τ", [("tau", "τ", "-")]),
    ("learning rate", [("lr", "lr", "-")]),
    ("views before post-normalization", [("views_mean_before", "mean", "-"), ("views_std_before", "std", "-")]),
    ("views after post-normalization", [("views_mean_after", "mean", "-"), ("views_std_after", "std", "-")]),
    ("pre-normalized log-mel batch", [("lms_mean", "mean", "-"), ("lms_std", "std", "-")]),
]


def save_figure(fig, path: str | Path, **savefig_kwargs) -> None:
    """``fig.savefig`` as an atomic write (:func:`byola.files.atomic_writer`): a reader never sees half a picture,
    and a link placed at ``path`` is replaced, not written through. The format comes from the suffix."""
    with atomic_writer(path, "wb") as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", **savefig_kwargs)


def read_log(path: str | Path) -> dict[str, np.ndarray]:
    """log.csv as columns of floats (empty cells → NaN)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UsageError(f"{path} has no logged steps yet", "plot the run after its first step")
    return {c: np.array([float(r[c]) if r.get(c) not in (None, "") else math.nan for r in rows])
            for c in rows[0]}


def _smooth(y: np.ndarray) -> np.ndarray:
    """Trailing moving average over about 2 % of the steps (at least 1)."""
    k = max(1, len(y) // 50)
    if k == 1:
        return y
    c = np.cumsum(np.insert(np.nan_to_num(y), 0, 0.0))
    out = (c[k:] - c[:-k]) / k
    return np.concatenate([c[1:k] / np.arange(1, k), out])


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Draw ``run_dir``/log.csv into ``out`` (default ``run_dir``/curves.png); returns the file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    log = read_log(run_dir / "log.csv")
    step = log["step"]
    losses = [c for c in log if c == "loss" or c.startswith("loss_")]
    panels = [("loss", [(c, c, "-") for c in losses])]
    panels += [(title, [s for s in series if s[0] in log]) for title, series in _PANELS]
    panels = [p for p in panels if p[1]]
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.4 * rows), squeeze=False)
    for ax, (title, series) in zip(axes.flat, panels):
        for k, (column, label, style) in enumerate(series):
            colour = f"C{k}"
            y = log[column]
            if title == "loss":
                if column != "loss" and np.allclose(y, log["loss"], equal_nan=True):
                    continue  # a single loss term equals the total
                ax.plot(step, y, color=colour, alpha=0.3, linewidth=0.8)
                ax.plot(step, _smooth(y), color=colour, linewidth=1.6, label=label)
            else:
                ax.plot(step, y, style, color=colour, linewidth=1.4, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(ax.get_legend_handles_labels()[1]) > 1:
            ax.legend(fontsize=8)
        if title == "learning rate":  # from 0, so that a schedule reads at its true scale
            ax.set_ylim(0, np.nanmax(log["lr"]) * 1.1)
        if title == "EMA decay τ":
            ax.set_ylim(min(np.nanmin(log["tau"]) - 0.002, 0.99), 1.0005)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    last = int(step[-1])
    fig.suptitle(f"{run_dir.name}: {last} steps, final loss {log['loss'][-1]:.4f}", fontsize=11)
    fig.tight_layout()
    path = Path(out) if out is not None else run_dir / "curves.png"
    save_figure(fig, path, dpi=100)
    plt.close(fig)
    return path
