"""EVAR's probe, made exact: standardization fitted on train, a linear (or MLP / kNN) probe whose hyper-parameter
(learning rate, or k) is chosen on the validation split, early stopping with best weights restored, seeded.

Linear/MLP: ``nn.Linear`` (MLP: Linear-ReLU-Dropout-Linear, HEAR-style), Adam, cross-entropy (BCE-with-logits for
multi-label), mini-batches of ``batch_size`` (≤ 200), up to ``max_epochs`` epochs, early stopping after
``patience`` epochs without a better validation score (ties broken by lower validation loss), best weights
restored. kNN: scikit-learn ``NearestNeighbors`` (cosine) on standardized features; class scores = neighbour
label frequencies; deterministic, so it runs once whatever the seeds.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from sklearn.neighbors import NearestNeighbors
from torch import nn
from tqdm.auto import tqdm

PROBES = ("linear", "mlp", "knn")


@dataclass(frozen=True)
class ProbeConfig:
    """Probe settings; the grid entry is picked on validation (``lr_grid`` for linear/mlp, ``k_grid`` for knn)."""

    kind: str = "linear"
    lr_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
    k_grid: tuple[int, ...] = (1, 5, 10, 20)
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 20
    hidden_dim: int = 1024
    dropout: float = 0.1
    device: str | None = None

    def __post_init__(self):
        if self.kind not in PROBES:
            raise ValueError(f"probe kind must be one of {PROBES}, got {self.kind!r}")
        if not 1 <= self.batch_size <= 200:
            raise ValueError(f"batch_size must be in 1..200 (EVAR's protocol), got {self.batch_size}")

    @property
    def grid(self) -> tuple:
        return self.k_grid if self.kind == "knn" else self.lr_grid

    @property
    def hyper_name(self) -> str:
        return "k" if self.kind == "knn" else "lr"


@dataclass
class FoldData:
    """Standardized features and targets of one fold (targets: class indices, or multi-hot for multi-label)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_valid: np.ndarray
    y_valid: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]
    metric: str
    warnings: list[str] = field(default_factory=list)

    @property
    def multilabel(self) -> bool:
        return self.y_train.ndim == 2


@dataclass
class Trial:
    """One probe training: its grid value, seed, scores and (single-label) test predictions."""

    hyper: float
    seed: int
    valid_score: float
    test_score: float
    epochs: int
    test_pred: np.ndarray | None = None


def make_fold_data(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray, y_valid: np.ndarray,
                   x_test: np.ndarray, y_test: np.ndarray, classes: list[str], metric: str) -> FoldData:
    """Standardize features ``x_*`` ``[N, D]`` (any float dtype, memmaps welcome) with train statistics (float64
    moments in chunks; zero-variance dimensions left unscaled); ``y_*`` are class indices ``[N]`` or multi-hot
    ``[N, C]``. Record classes missing from train or test so that results can say what they were computed on."""
    x_train = np.asarray(x_train, dtype=np.float32)
    mean = x_train.mean(axis=0, dtype=np.float64)
    sq = sum(np.square(x_train[i:i + 8192] - mean).sum(axis=0) for i in range(0, len(x_train), 8192))
    std = np.sqrt(sq / max(len(x_train), 1))
    std[std < 1e-8] = 1.0
    mean32, std32 = mean.astype(np.float32), std.astype(np.float32)
    scale = lambda x: (np.asarray(x, dtype=np.float32) - mean32) / std32  # float32: no float64 copy of big sets
    warnings = []
    present = lambda y: (y.sum(axis=0) > 0) if y.ndim == 2 else np.bincount(y, minlength=len(classes)) > 0
    absent = [c for c, p, q in zip(classes, present(y_train), present(y_test)) if q and not p]
    if absent:
        warnings.append(f"{len(absent)} test class(es) absent from training (never predicted): "
                        + ", ".join(absent[:10]) + ("..." if len(absent) > 10 else ""))
    if y_train.ndim == 2:
        no_pos = int((~present(y_test)).sum())
        if no_pos:
            warnings.append(f"{no_pos} class(es) without a positive test clip are left out of mAP")
    return FoldData(scale(x_train), y_train, scale(x_valid), y_valid, scale(x_test), y_test, classes, metric,
                    warnings)


def score(metric: str, y_true: np.ndarray, scores: np.ndarray) -> float:
    """Accuracy of the arg-max, or macro mAP over the classes with at least one positive."""
    if len(y_true) == 0:
        return float("nan")
    if metric == "accuracy":
        return float((scores.argmax(axis=1) == y_true).mean())
    keep = y_true.sum(axis=0) > 0
    return float(average_precision_score(y_true[:, keep], scores[:, keep], average="macro"))


def build_head(kind: str, in_dim: int, n_classes: int, hidden_dim: int = 1024, dropout: float = 0.1) -> nn.Module:
    """``nn.Linear`` for the linear probe; one hidden layer with ReLU and dropout for the MLP probe."""
    if kind == "linear":
        return nn.Linear(in_dim, n_classes)
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden_dim, n_classes))


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    model.eval()
    return torch.cat([model(x[i:i + chunk]) for i in range(0, len(x), chunk)]) if len(x) else x.new_zeros(0, 0)


def train_head(data: FoldData, lr: float, seed: int, cfg: ProbeConfig) -> tuple[nn.Module, float, int]:
    """Train one linear/MLP head; returns it with its best validation weights, that score and the epoch count.
    Without validation clips it trains ``max_epochs`` epochs and keeps the last weights (score NaN)."""
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    n_classes = len(data.classes)
    model = build_head(cfg.kind, data.x_train.shape[1], n_classes, cfg.hidden_dim, cfg.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss() if data.multilabel else nn.CrossEntropyLoss()
    xt, yt = torch.from_numpy(data.x_train).to(device), torch.from_numpy(data.y_train).to(device)
    xv, yv = torch.from_numpy(data.x_valid).to(device), torch.from_numpy(data.y_valid).to(device)
    best = (-np.inf, -np.inf)
    best_state, best_epoch, epoch = copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, cfg.max_epochs + 1):
        model.train()
        for batch in torch.randperm(len(xt), generator=generator).split(cfg.batch_size):
            batch = batch.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss_fn(model(xt[batch]), yt[batch]).backward()
            optimizer.step()
        if len(xv) == 0:
            continue
        logits = _predict(model, xv)
        key = (score(data.metric, data.y_valid, logits.float().cpu().numpy()), -loss_fn(logits, yv).item())
        if key > best:
            best, best_state, best_epoch = key, copy.deepcopy(model.state_dict()), epoch
        elif epoch - best_epoch >= cfg.patience:
            break
    if len(xv):
        model.load_state_dict(best_state)
    return model, float(best[0]) if len(xv) else float("nan"), epoch


def knn_scores(data: FoldData, k: int, x: np.ndarray) -> np.ndarray:
    """Neighbour label frequencies ``[N, C]`` among the ``k`` nearest training clips (cosine distance)."""
    k = min(k, len(data.x_train))
    nn_index = NearestNeighbors(n_neighbors=k, metric="cosine").fit(data.x_train)
    if len(x) == 0:
        return np.zeros((0, len(data.classes)), dtype=np.float32)
    neighbours = nn_index.kneighbors(x, return_distance=False)
    onehot = data.y_train if data.multilabel else np.eye(len(data.classes), dtype=np.float32)[data.y_train]
    return onehot[neighbours].mean(axis=1)


def run_trials(data: FoldData, cfg: ProbeConfig, seeds: tuple[int, ...], progress: bool = False) -> list[Trial]:
    """Every (grid value, seed) probe on this fold, each scored on validation and test.

    An empty validation split leaves nothing to choose on: the grid shrinks to its middle value and this is
    recorded in ``data.warnings``.
    """
    grid = cfg.grid
    if len(data.y_valid) == 0:
        grid = (grid[len(grid) // 2],)
        data.warnings.append(f"empty validation split: no early stopping, {cfg.hyper_name}={grid[0]} unchosen")
    if cfg.kind == "knn" and max(grid) > len(data.x_train):
        data.warnings.append(f"k clipped to the {len(data.x_train)} training clips")
    trials = []
    runs = [(h, s) for h in grid for s in (seeds[:1] if cfg.kind == "knn" else seeds)]
    for hyper, seed in tqdm(runs, desc=f"{cfg.kind} probe", unit="run", disable=not progress, leave=False):
        if cfg.kind == "knn":
            test_scores, epochs = knn_scores(data, hyper, data.x_test), 0
            valid = score(data.metric, data.y_valid, knn_scores(data, hyper, data.x_valid))
        else:
            model, valid, epochs = train_head(data, hyper, seed, cfg)
            device = next(model.parameters()).device
            test_scores = _predict(model, torch.from_numpy(data.x_test).to(device)).float().cpu().numpy()
        pred = None if data.multilabel else test_scores.argmax(axis=1)
        trials.append(Trial(hyper, seed, valid, score(data.metric, data.y_test, test_scores), epochs, pred))
    return trials


def choose(trials_per_fold: list[list[Trial]]) -> float:
    """The grid value with the best mean validation score over all folds and seeds (NaN-safe; the smaller value
    wins a tie). With no validation scores at all, the single grid value that was run."""
    values = sorted({t.hyper for trials in trials_per_fold for t in trials})
    means = []
    for v in values:
        s = [t.valid_score for trials in trials_per_fold for t in trials if t.hyper == v]
        means.append(np.nanmean(s) if not np.all(np.isnan(s)) else -np.inf)
    return values[int(np.argmax(means))]
