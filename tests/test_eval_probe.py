"""The probe: standardization, linear/MLP/kNN training, validation-chosen hyper-parameters, awkward data."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from byola.evaluation.probe import ProbeConfig, choose, make_fold_data, run_trials, score, train_head

FAST = dict(lr_grid=(1e-3, 1e-1), max_epochs=10, patience=4, batch_size=64, device="cpu")


def _clusters(n_per_class: int, n_classes: int = 3, dim: int = 8, seed: int = 0, spread: float = 0.3):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_classes, dim)) * 3
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = centers[y] + spread * rng.normal(size=(len(y), dim)) + 50.0  # offset: standardization must remove it
    return x.astype(np.float32), y


def _data(n_train=20, n_valid=5, n_test=10, **kw):
    xs, ys = zip(*[_clusters(n, seed=s, **kw) for n, s in [(n_train, 0), (n_valid, 0), (n_test, 0)]])
    classes = [f"c{i}" for i in range(int(max(y.max() for y in ys)) + 1)]
    return make_fold_data(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2], classes, "accuracy")


def test_standardization_uses_train_statistics_only():
    x_train = np.array([[0.0, 5.0], [2.0, 5.0]], dtype=np.float32)
    y = np.array([0, 1])
    data = make_fold_data(x_train, y, x_train + 10, y, np.array([[1.0, 6.0]], np.float32), y[:1], ["a", "b"],
                          "accuracy")
    assert np.allclose(data.x_train, [[-1, 0], [1, 0]])  # zero-variance dimension left unscaled
    assert np.allclose(data.x_valid, [[9, 10], [11, 10]]) and np.allclose(data.x_test, [[0, 1]])


def test_score_accuracy_and_map():
    assert score("accuracy", np.array([0, 1, 1]), np.array([[2, 1], [0, 3], [5, 1]])) == pytest.approx(2 / 3)
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float32)  # class 2 has no positive: left out
    assert score("mAP", y, y * 2 - 1) == pytest.approx(1.0)
    assert score("mAP", y, -(y * 2 - 1)) < 1.0


@pytest.mark.parametrize("kind", ["linear", "mlp", "knn"])
def test_probes_learn_separable_clusters_and_are_seeded(kind):
    data = _data()
    cfg = ProbeConfig(kind=kind, k_grid=(1, 3), hidden_dim=16, **FAST)
    trials = run_trials(data, cfg, seeds=(0, 1))
    assert len(trials) == (2 if kind == "knn" else 4)
    best = choose([trials])
    assert best in cfg.grid
    assert max(t.test_score for t in trials) == 1.0
    again = run_trials(data, cfg, seeds=(0, 1))
    assert [t.test_score for t in trials] == [t.test_score for t in again]
    assert all((a.test_pred == b.test_pred).all() for a, b in zip(trials, again))


def test_early_stopping_restores_best_weights():
    data = _data(spread=2.0)
    cfg = ProbeConfig(lr_grid=(0.5,), max_epochs=200, patience=3, batch_size=64, device="cpu")
    model, valid, epochs = train_head(data, 0.5, 0, cfg)
    assert epochs < 200
    with torch.no_grad():
        restored = score("accuracy", data.y_valid, model(torch.from_numpy(data.x_valid)).numpy())
    assert restored == pytest.approx(valid)


def test_lr_is_chosen_on_validation_not_test():
    data = _data()
    cfg = ProbeConfig(**FAST)
    trials = run_trials(data, cfg, seeds=(0,))
    for t in trials:  # make the validation scores prefer the first grid value
        t.valid_score = 1.0 if t.hyper == 1e-3 else 0.0
        t.test_score = 0.0 if t.hyper == 1e-3 else 1.0
    assert choose([trials]) == 1e-3


def test_class_absent_from_training_is_reported_not_fatal():
    x, y = _clusters(10, n_classes=4)
    train = y != 3
    data = make_fold_data(x[train], y[train], x[train][:4], y[train][:4], x, y, ["a", "b", "c", "d"], "accuracy")
    assert any("absent from training" in w and "d" in w for w in data.warnings)
    trials = run_trials(data, ProbeConfig(**FAST), seeds=(0,))
    assert max(t.test_score for t in trials) == pytest.approx(0.75)  # class d (a quarter) is never right


def test_empty_validation_and_single_examples():
    x, y = _clusters(1, n_classes=3)
    data = make_fold_data(x, y, x[:0], y[:0], x, y, ["a", "b", "c"], "accuracy")
    trials = run_trials(data, ProbeConfig(kind="knn", k_grid=(5, 10), device="cpu"), seeds=(0,))
    assert len(trials) == 1 and np.isnan(trials[0].valid_score)
    assert any("empty validation" in w for w in data.warnings) and any("k clipped" in w for w in data.warnings)
    assert choose([trials]) == 10
    trials = run_trials(data, ProbeConfig(**FAST), seeds=(0,))
    assert trials[0].epochs == FAST["max_epochs"] and trials[0].test_score == 1.0


def test_multilabel_probe_uses_bce_and_map():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 4)) < 0.4).astype(np.float32)
    x = (y @ rng.normal(size=(4, 6)) + 0.1 * rng.normal(size=(60, 6))).astype(np.float32)
    data = make_fold_data(x[:40], y[:40], x[40:50], y[40:50], x[50:], y[50:], list("abcd"), "mAP")
    trials = run_trials(data, ProbeConfig(**FAST), seeds=(0,))
    assert all(t.test_pred is None for t in trials)
    assert max(t.test_score for t in trials) > 0.9
    knn = run_trials(data, ProbeConfig(kind="knn", k_grid=(3,)), seeds=(0,))
    assert knn[0].test_score > 0.7


def test_config_validation():
    with pytest.raises(ValueError, match="probe kind"):
        ProbeConfig(kind="svm")
    with pytest.raises(ValueError, match="batch_size"):
        ProbeConfig(batch_size=256)
