"""Numerics of the closed-form predictors against exact matrix functions (float64 eigh / lstsq / SVD)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from byola.engine.predictors import (
    PREDICTORS, DirectCopyPredictor, DirectPredPredictor, LeastSquaresPredictor, NeumannPredictor, NS2Predictor,
    NewtonSchulzPredictor, StiefelPredictor, VisserPredictor, build_predictor, newton_schulz, newton_schulz_sqrt,
    visser_sqrt,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def spd(d: int, cond: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Symmetric positive definite d × d with eigenvalues log-spaced in [1/cond, 1] (float64)."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.logspace(0, -torch.log10(torch.tensor(cond)).item(), d, dtype=torch.float64)
    return (q * s) @ q.T


def mat_power(m: torch.Tensor, power: float) -> torch.Tensor:
    s, u = torch.linalg.eigh(m.double())
    return (u * s.clamp_min(0) ** power) @ u.T


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (torch.linalg.matrix_norm(a.double() - b.double()) / torch.linalg.matrix_norm(b.double())).item()


def batch(b: int = 64, d: int = 8, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(b, d, generator=g) @ torch.randn(d, d, generator=g) * 0.5
    zt = z @ torch.randn(d, d, generator=g) * 0.3 + 0.1 * torch.randn(b, d, generator=g)
    return z, zt


# --- matrix functions -----------------------------------------------------------------------------------------

def test_newton_schulz_error_decreases_toward_sqrt_and_inverse_sqrt():
    sigma = spd(12, cond=50.0)
    exact = mat_power(sigma, 0.5)
    errors = [rel_err(newton_schulz_sqrt(sigma, n), exact) for n in range(0, 25, 2)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]) if earlier > 1e-12)
    assert errors[0] > 0.1 and errors[-1] < 1e-9
    a, b, norm = newton_schulz(sigma, 30)
    assert rel_err(b / norm.sqrt(), mat_power(sigma, -0.5)) < 1e-8
    assert rel_err(a @ b, torch.eye(12, dtype=torch.float64)) < 1e-8


def test_newton_schulz_default_nine_steps_on_well_conditioned_matrix():
    sigma = spd(16, cond=4.0, seed=1) * 7.0  # arbitrary scale: handled by the Frobenius normalization
    assert rel_err(newton_schulz_sqrt(sigma.float(), 9), mat_power(sigma, 0.5)) < 1e-4


def test_visser_fixed_point_is_the_square_root():
    sigma = spd(10, cond=5.0, seed=2) * 3.0
    exact = mat_power(sigma, 0.5)
    # The exact root is a fixed point of the normalized iteration P ← P + η(Σ/‖Σ‖ − P²).
    norm = torch.linalg.matrix_norm(sigma)
    root_n = exact / norm.sqrt()
    assert torch.allclose(root_n + 0.5 * (sigma / norm - root_n @ root_n), root_n, atol=1e-12)
    errors = [rel_err(visser_sqrt(sigma, eta=0.5, n_iter=n), exact) for n in (1, 5, 20, 80, 400)]
    assert all(later < earlier for earlier, later in zip(errors, errors[1:]))
    assert errors[-1] < 1e-8
    # Unnormalized form with a stable step size converges too.
    assert rel_err(visser_sqrt(spd(6, 3.0, seed=3), eta=0.3, n_iter=600, normalize=False),
                   mat_power(spd(6, 3.0, seed=3), 0.5)) < 1e-8


def test_visser_rejects_bad_parameters():
    with pytest.raises(ValueError):
        visser_sqrt(torch.eye(3), eta=0.0)


# --- predictors ---------------------------------------------------------------------------------------------------

def test_least_squares_matches_torch_lstsq():
    z, zt = batch(b=64, d=8)
    pred = LeastSquaresPredictor(8, ridge=0.0)
    out = pred(z, zt)
    w = torch.linalg.lstsq(z.double(), zt.double()).solution
    assert rel_err(pred.matrix.T, w) < 1e-4
    assert torch.allclose(out.double(), z.double() @ w, atol=1e-4)


def test_least_squares_ridge_closed_form():
    z, zt = batch(b=6, d=8, seed=1)  # b < d: Σ singular, the ridge makes it solvable
    pred = LeastSquaresPredictor(8, ridge=0.05)
    pred.update(z, zt)
    zd, ztd = z.double(), zt.double()
    w = torch.linalg.solve(zd.T @ zd / 6 + 0.05 * torch.eye(8, dtype=torch.float64), zd.T @ ztd / 6)
    assert rel_err(pred.matrix.T, w) < 1e-4
    assert torch.isfinite(pred.matrix).all()


def test_neumann_formula_and_exact_when_sigma_is_identity():
    z, zt = batch(b=32, d=6, seed=2)
    zd, ztd = z.double(), zt.double()
    sigma, cross = zd.T @ zd / 32, zd.T @ ztd / 32
    pred = NeumannPredictor(6, normalize="none")
    pred.update(z, zt)
    assert rel_err(pred.matrix.T, 2 * cross - sigma @ cross) < 1e-5
    pred = NeumannPredictor(6)
    pred.update(z, zt)
    lam = torch.linalg.eigvalsh(sigma)[-1]
    assert rel_err(pred.matrix.T, (2 * cross - sigma / lam @ cross) / lam) < 1e-5
    # Columns orthogonal with Σ = ZᵀZ/b = I (plain) or = 3I (spectral): the expansion equals least squares.
    q, _ = torch.linalg.qr(torch.randn(32, 6, dtype=torch.float64))
    for normalize, scale in (("none", 1.0), ("spectral", 3.0)):
        zi = q * (32 * scale) ** 0.5
        pred = NeumannPredictor(6, normalize=normalize)
        pred.update(zi.float(), zt)
        assert rel_err(pred.matrix.T, torch.linalg.lstsq(zi, zt.double()).solution) < 1e-5
    # The spectral form keeps every factor 2 − λᵢ/λ positive: no direction is flipped, even for a large Σ.
    big = z * 10
    pred = NeumannPredictor(6)
    pred.update(big, big)
    assert (torch.linalg.eigvalsh(0.5 * (pred.matrix + pred.matrix.T)) > 0).all()


def test_directpred_eigenvalues_and_eigenvectors():
    z, zt = batch(b=64, d=8, seed=3)
    pred = DirectPredPredictor(8, eps=0.1)
    pred.update(z, zt)
    sigma = z.double().T @ z.double() / 64
    s = torch.linalg.eigvalsh(sigma)
    expected = (s.clamp_min(0) / s.max()).sqrt() + 0.1
    assert torch.allclose(torch.linalg.eigvalsh(pred.matrix.double()), expected, atol=1e-5)
    assert torch.allclose(pred.matrix.double() @ sigma, sigma @ pred.matrix.double(), atol=1e-4)  # same eigenbasis


def test_directpred_statistics_ema():
    (z1, _), (z2, _) = batch(seed=4), batch(seed=5)
    pred = DirectPredPredictor(8, stat_momentum=0.3)
    pred.update(z1)
    pred.update(z2)
    s1, s2 = z1.T @ z1 / 64, z2.T @ z2 / 64
    assert torch.allclose(pred.sigma, 0.3 * s1 + 0.7 * s2, atol=1e-5)


def test_directcopy_is_normalized_sigma_plus_eps():
    z, _ = batch(seed=6)
    sigma = z.T @ z / 64
    pred = DirectCopyPredictor(8, eps=0.2)
    pred.update(z)
    lmax = torch.linalg.eigvalsh(sigma)[-1]
    assert torch.allclose(pred.matrix, sigma / lmax + 0.2 * torch.eye(8), atol=1e-5)
    assert torch.linalg.eigvalsh(pred.matrix)[-1].item() == pytest.approx(1.2, abs=1e-5)
    pred = DirectCopyPredictor(8, eps=0.0, norm="fro")
    pred.update(z)
    assert torch.linalg.matrix_norm(pred.matrix).item() == pytest.approx(1.0, abs=1e-5)


def test_newton_schulz_and_visser_predictors_approach_sqrt_sigma():
    z, _ = batch(b=256, d=8, seed=7)
    exact = mat_power(z.double().T @ z.double() / 256, 0.5)
    errs = []
    for n in (2, 5, 9, 20):
        pred = NewtonSchulzPredictor(8, n_iter=n)
        pred.update(z)
        errs.append(rel_err(pred.matrix, exact))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4
    pred = VisserPredictor(8, n_iter=2000)
    pred.update(z)
    assert rel_err(pred.matrix, exact) < 1e-4


def test_ns2_approaches_fourth_root():
    sigma = spd(8, cond=20.0, seed=8).float()
    exact = mat_power(sigma, 0.25)
    errs = []
    for n in (3, 7, 12, 25):
        pred = NS2Predictor(8, n_iter=n, second_iter=n)
        errs.append(rel_err(pred.solve(sigma, sigma), exact))
    assert errs == sorted(errs, reverse=True) and errs[-1] < 1e-4


def test_restarting_newton_schulz_toward_sqrt_equals_continuing():
    """Why NS²'s second stage is a composition: a restart on the residual R = B_n A_n reproduces NS with 2n steps."""
    sigma = spd(8, cond=1e3, seed=17)
    a7, b7, _ = newton_schulz(sigma, 7)
    a14, _, _ = newton_schulz(sigma, 14)
    eye = torch.eye(8, dtype=torch.float64)
    y, z = b7 @ a7, eye
    for _ in range(7):
        t = 0.5 * (3 * eye - z @ y)
        y, z = y @ t, t @ z
    assert rel_err(a7 @ z, a14) < 1e-10


def test_stiefel_is_scaled_orthogonal_polar_factor():
    # source="cross": converged P is a multiple of the polar factor of Cᵀ, i.e. z @ Pᵀ ∝ z @ (U Vᵀ).
    c = (spd(8, cond=3.0, seed=9) @ torch.linalg.qr(torch.randn(8, 8, dtype=torch.float64))[0]).float()
    pred = StiefelPredictor(8, n_iter=40, source="cross")
    p = pred.solve(torch.eye(8), c).double()
    gram = p @ p.T
    assert rel_err(gram / gram.diagonal().mean(), torch.eye(8, dtype=torch.float64)) < 1e-5
    u, _, vh = torch.linalg.svd(c.double())
    polar = u @ vh
    scale = (p.T * polar).sum() / (polar * polar).sum()
    assert rel_err(p.T, scale * polar) < 1e-5
    # source="sigma" with full-rank Σ: the polar factor of a symmetric PD matrix is I.
    sigma = spd(8, cond=3.0, seed=10).float()
    p = StiefelPredictor(8, n_iter=40).solve(sigma, sigma).double()
    assert rel_err(p / p.diagonal().mean(), torch.eye(8, dtype=torch.float64)) < 1e-5
    # Default n = 9 under-converges a poorly conditioned Σ: eigenvalues in (0, 1/‖B‖·...] stay ordered like Σ's.
    sigma = spd(8, cond=1e3, seed=11).float()
    p = StiefelPredictor(8).solve(sigma, sigma)
    ev = torch.linalg.eigvalsh(0.5 * (p + p.T))
    assert (ev > 0).all() and ev.max() / ev.min() > 2


# --- schedule, EMA, state, gradients --------------------------------------------------------------------------------

def test_predictor_ema_blends_matrices():
    (z1, t1), (z2, t2) = batch(seed=12), batch(seed=13)
    ref1, ref2 = LeastSquaresPredictor(8), LeastSquaresPredictor(8)
    ref1.update(z1, t1)
    ref2.update(z2, t2)
    pred = LeastSquaresPredictor(8, ema=0.9)
    pred.update(z1, t1)
    assert torch.allclose(pred.matrix, ref1.matrix)
    pred.update(z2, t2)
    assert torch.allclose(pred.matrix, 0.9 * ref1.matrix + 0.1 * ref2.matrix, atol=1e-5)


def test_update_every_k_calls_and_state_dict_resume():
    pred = NewtonSchulzPredictor(8, update_every=3, stat_momentum=0.5)
    snapshots = []
    for seed in range(5):
        pred.update(batch(seed=20 + seed)[0])
        snapshots.append(pred.matrix.clone())
    changed = [not torch.equal(a, b) for a, b in zip(snapshots, snapshots[1:])]
    assert changed == [False, False, True, False]  # recomputed at calls 0 and 3 only
    assert int(pred.calls) == 5
    resumed = NewtonSchulzPredictor(8, update_every=3, stat_momentum=0.5)
    resumed.load_state_dict(pred.state_dict())
    assert resumed._calls == 5
    for module in (pred, resumed):
        module.update(batch(seed=30)[0])  # call 5: no recompute
        module.update(batch(seed=31)[0])  # call 6: recompute
    assert torch.equal(pred.matrix, resumed.matrix) and torch.equal(pred.sigma, resumed.sigma)
    assert not torch.equal(pred.matrix, snapshots[-1])


def test_forward_gradient_reaches_online_projection_only():
    z, zt = batch(seed=14)
    z.requires_grad_(True)
    pred = DirectPredPredictor(8)
    pred.train()
    out = pred(z, zt)
    out.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert not pred.matrix.requires_grad and list(pred.parameters()) == []
    before = pred.matrix.clone()
    pred.eval()
    pred(z.detach() * 3, zt)
    assert torch.equal(pred.matrix, before)  # no update in eval mode


def test_update_under_autocast_and_input_checks():
    z, zt = batch(seed=15)
    pred = LeastSquaresPredictor(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = pred(z, zt)
    assert pred.matrix.dtype == torch.float32 and torch.isfinite(out).all()
    with pytest.raises(ValueError):
        pred.update(z)  # least squares needs targets
    with pytest.raises(ValueError):
        pred.update(z[:, :4], zt[:, :4])
    with pytest.raises(ValueError):
        build_predictor("nope", 8)
    with pytest.raises(ValueError):
        LeastSquaresPredictor(8, ema=1.0)


@pytest.mark.parametrize("kind", sorted(PREDICTORS))
def test_every_predictor_builds_and_runs(kind):
    pred = build_predictor(kind, 8, hidden_dim=16)
    z, zt = batch(seed=16)
    z.requires_grad_(True)
    out = pred(z, zt)
    assert out.shape == z.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(z.grad).all()


DDP_SCRIPT = """
import sys, torch, torch.distributed as dist
from byola.engine.predictors import LeastSquaresPredictor
rank, init, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=2)
z, zt = torch.load(out + ".in")
pred = LeastSquaresPredictor(z.shape[1], ridge=0.0)
pred.update(z[rank * 16:(rank + 1) * 16], zt[rank * 16:(rank + 1) * 16])
torch.save(pred.matrix, out + "." + str(rank))
dist.destroy_process_group()
"""


def test_statistics_are_all_reduced_across_ranks(tmp_path):
    z, zt = batch(b=32, d=6, seed=40)
    out = str(tmp_path / "p")
    torch.save((z, zt), out + ".in")
    script = tmp_path / "worker.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "init"), out], env=env)
             for r in range(2)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    mats = [torch.load(f"{out}.{r}") for r in range(2)]
    full = LeastSquaresPredictor(6, ridge=0.0)
    full.update(z, zt)
    assert torch.equal(mats[0], mats[1])
    assert torch.allclose(mats[0], full.matrix, atol=1e-5)
    half = LeastSquaresPredictor(6, ridge=0.0)
    half.update(z[:16], zt[:16])
    assert not torch.allclose(mats[0], half.matrix, atol=1e-3)  # a rank alone would differ
