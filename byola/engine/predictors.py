"""Predictors: BYOL's trainable MLP and the closed-form predictors of "The Edge of Orthogonality"
(Richemond et al., ICML 2023), which replace the trainable one by a matrix computed from batch statistics.

Notation (per batch of ``b`` pairs): ``Z`` online projections, ``Z'`` target projections, both ``b × d``;
``Σ = ZᵀZ / b`` (online correlation) and ``C = ZᵀZ' / b`` (online–target cross-correlation).

Convention: a predictor is a ``d × d`` matrix ``P`` acting on column vectors, ``p = P z``; on a row batch
``[B, d]`` that is ``z @ P.T``. The least-squares solution ``W = (ZᵀZ)⁻¹ZᵀZ'`` of ``Z W ≈ Z'`` is therefore
stored as ``P = Wᵀ``.

Every closed-form predictor is an ``nn.Module`` whose ``forward(z_online, z_target=None)``

1. in training mode with ``z_target`` given, calls :meth:`ClosedFormPredictor.update`: accumulates Σ (and C),
   optionally as an EMA across steps (``stat_momentum``), and every ``update_every`` calls recomputes ``P``
   without gradient (float32, autocast off), optionally blended into the previous ``P`` (``ema``);
2. returns ``z_online @ P.T`` — gradient flows into ``z_online``, never into ``P``.

State (``matrix`` = P, ``sigma``, ``cross``, ``calls``) lives in buffers, so checkpoints and resume capture it.
The ridge ``α`` is added to Σ (``Σ + αI``) before any predictor is computed. Under ``torch.distributed``
(``sync_dist=True``) the batch sums are all-reduced so every rank computes the same ``P``; the batch count is
taken as ``b × world_size`` (equal per-rank batches, as with ``drop_last``).

The matrix functions (:func:`newton_schulz`, :func:`visser_sqrt`, ...) are plain functions usable alone.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .heads import MLP


def _eye_like(m: torch.Tensor) -> torch.Tensor:
    return torch.eye(m.shape[-1], device=m.device, dtype=m.dtype)


def _fro(m: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(m, "fro").clamp_min(torch.finfo(m.dtype).tiny)


def newton_schulz(m: torch.Tensor, n_iter: int = 9) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Coupled Newton–Schulz iteration for the square root of a symmetric PSD matrix ``m``.

    ``A₀ = m/‖m‖_F, B₀ = I; A ← ½A(3I − BA), B ← ½(3I − BA)B``. Returns ``(A_n, B_n, ‖m‖_F)``:
    ``A_n → (m/‖m‖_F)^{1/2}`` and ``B_n → (m/‖m‖_F)^{-1/2}`` on the range of ``m`` (quadratically once close;
    slowly for eigenvalues much smaller than ``‖m‖_F``). ``√m ≈ A_n·√‖m‖_F``.
    """
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    norm = _fro(m)
    eye = _eye_like(m)
    a, b = m / norm, eye
    for _ in range(n_iter):
        t = 0.5 * (3 * eye - b @ a)
        a, b = a @ t, t @ b
    return a, b, norm


def newton_schulz_sqrt(m: torch.Tensor, n_iter: int = 9) -> torch.Tensor:
    """``√m`` by :func:`newton_schulz`: ``A_n · √‖m‖_F``."""
    a, _, norm = newton_schulz(m, n_iter)
    return a * norm.sqrt()


def visser_sqrt(m: torch.Tensor, eta: float = 0.5, n_iter: int = 10, normalize: bool = True) -> torch.Tensor:
    """Visser's iteration ``P ← P + η(m − P²)`` from ``P₀ = I/(2η)``; its fixed point is ``√m``.

    With ``normalize`` (default) it runs on ``m/‖m‖_F`` (eigenvalues in [0, 1]) and rescales the result by
    ``√‖m‖_F``, so the step size ``η`` does not depend on the scale of ``m``. For an eigenvalue ``λ`` of the
    normalized matrix the error contracts by about ``|1 − 2η√λ|`` per step (stable for ``η√λ < 1``).
    """
    if eta <= 0 or n_iter < 0:
        raise ValueError(f"need eta > 0 and n_iter >= 0, got eta={eta}, n_iter={n_iter}")
    norm = _fro(m) if normalize else torch.ones((), device=m.device, dtype=m.dtype)
    target = m / norm
    p = _eye_like(m) / (2 * eta)
    for _ in range(n_iter):
        p = p + eta * (target - p @ p)
    return p * norm.sqrt()


class ClosedFormPredictor(nn.Module):
    """Base class: statistics, update schedule, EMA and buffers. Subclasses implement :meth:`solve`.

    Args:
        dim: projection size ``d``.
        ridge: ``α`` added to Σ as ``αI`` before solving.
        ema: momentum of an EMA on the predictor matrix, ``P ← ema·P + (1 − ema)·P_new`` (0: no EMA).
        update_every: recompute ``P`` every ``k`` training calls (statistics still accumulate every call; with
            gradient accumulation a call is a micro-batch).
        stat_momentum: EMA momentum for Σ and C across calls, ``Σ ← ρΣ + (1 − ρ)Σ_batch`` (0: batch only).
        sync_dist: all-reduce batch statistics across ``torch.distributed`` ranks when initialized.
    """

    uses_cross = False  # whether solve() needs C (and thus target projections)

    def __init__(self, dim: int, ridge: float = 0.0, ema: float = 0.0, update_every: int = 1,
                 stat_momentum: float = 0.0, sync_dist: bool = True):
        super().__init__()
        if dim < 1 or update_every < 1:
            raise ValueError(f"need dim >= 1 and update_every >= 1, got {dim}, {update_every}")
        for name, value in (("ema", ema), ("stat_momentum", stat_momentum)):
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.dim, self.ridge, self.ema, self.update_every = dim, ridge, ema, update_every
        self.stat_momentum, self.sync_dist = stat_momentum, sync_dist
        self.register_buffer("matrix", torch.eye(dim))
        self.register_buffer("sigma", torch.zeros(dim, dim))
        self.register_buffer("cross", torch.zeros(dim, dim))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self._calls = 0  # host mirror of `calls`: scheduling without a device sync
        self.register_load_state_dict_post_hook(ClosedFormPredictor._sync_calls)

    @staticmethod
    def _sync_calls(module: "ClosedFormPredictor", incompatible_keys: Any) -> None:
        module._calls = int(module.calls)

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, ridge={self.ridge}, ema={self.ema}, update_every={self.update_every}, "
                f"stat_momentum={self.stat_momentum}")

    def solve(self, sigma: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        """The predictor matrix ``P`` (``p = P z``) from ``Σ + αI`` and ``C`` (float32, no grad)."""
        raise NotImplementedError

    def _batch_stats(self, z: torch.Tensor, zt: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        sums = [z.T @ z] + ([z.T @ zt] if zt is not None else [])
        stacked = torch.stack(sums)
        count = z.shape[0]
        if self.sync_dist and dist.is_available() and dist.is_initialized():
            dist.all_reduce(stacked)
            count *= dist.get_world_size()
        stacked = stacked / count
        return stacked[0], (stacked[1] if zt is not None else None)

    @torch.no_grad()
    def update(self, z_online: torch.Tensor, z_target: torch.Tensor | None = None) -> None:
        """Accumulate this batch's statistics and, on schedule, recompute ``P``."""
        if z_online.dim() != 2 or z_online.shape[1] != self.dim:
            raise ValueError(f"expected z_online of shape [B, {self.dim}], got {tuple(z_online.shape)}")
        if self.uses_cross:
            if z_target is None:
                raise ValueError(f"{type(self).__name__} needs target projections (z_target)")
            if z_target.shape != z_online.shape:
                raise ValueError(f"z_target {tuple(z_target.shape)} must match z_online {tuple(z_online.shape)}")
        with torch.autocast(device_type=z_online.device.type, enabled=False):
            z = z_online.detach().float()
            zt = z_target.detach().float() if self.uses_cross else None
            sigma, cross = self._batch_stats(z, zt)
            first = self._calls == 0
            for buf, new in ((self.sigma, sigma), (self.cross, cross)):
                if new is None:
                    continue
                if first or self.stat_momentum == 0:
                    buf.copy_(new)
                else:
                    buf.lerp_(new, 1 - self.stat_momentum)
            if self._calls % self.update_every == 0:
                reg = self.sigma + self.ridge * _eye_like(self.sigma) if self.ridge else self.sigma
                new_p = self.solve(reg, self.cross)
                if first or self.ema == 0:
                    self.matrix.copy_(new_p)
                else:
                    self.matrix.lerp_(new_p, 1 - self.ema)
        self._calls += 1
        self.calls.fill_(self._calls)

    def forward(self, z_online: torch.Tensor, z_target: torch.Tensor | None = None) -> torch.Tensor:
        """Update (training mode, ``z_target`` given), then ``z_online @ P.T``."""
        if self.training and z_target is not None:
            self.update(z_online, z_target)
        return z_online @ self.matrix.T.to(z_online.dtype)


class LeastSquaresPredictor(ClosedFormPredictor):
    """``W = (ZᵀZ + αbI)⁻¹ZᵀZ' = (Σ + αI)⁻¹C`` (the ``b`` cancels), ``P = Wᵀ``. Solved with
    ``torch.linalg.solve_ex`` (no host sync). Default ridge ``α = 0.1`` (ours): ``b < d`` makes Σ singular, and
    a near-exact in-batch fit (α = 1e-3) left almost no training signal in the digits benchmark
    (probe at random-init level), while α = 0.1 learned. α is absolute: BYOL projections at init have per-dim
    variance ≈ 0.17 (PyTorch's Linear init), the scale this default was chosen at."""

    uses_cross = True

    def __init__(self, dim: int, ridge: float = 0.1, **kwargs: Any):
        super().__init__(dim, ridge=ridge, **kwargs)

    def solve(self, sigma: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve_ex(sigma, cross)[0].T


class NeumannPredictor(ClosedFormPredictor):
    """First-order Neumann expansion of the least-squares predictor, ``Σ⁻¹ ≈ 2I − Σ`` (valid for
    ``‖I − Σ‖ < 1``). Scaling: both products carry ``1/b`` (``Σ = ZᵀZ/b``, ``C = ZᵀZ'/b``).

    ``normalize="spectral"`` (default, ours): expand around the largest eigenvalue ``λ``,
    ``Σ⁻¹ ≈ (2I − Σ/λ)/λ``, so ``W = (2C − (Σ/λ)C)/λ``; all factors ``2 − λᵢ/λ`` lie in [1, 2), and the result
    is exact when Σ is isotropic. ``normalize="none"``: the plain ``W = 2C − ΣC`` (exact when Σ = I; it flips
    directions whose eigenvalue exceeds 2, which made training diverge in the digits benchmark).
    ``P = Wᵀ``."""

    uses_cross = True

    def __init__(self, dim: int, normalize: str = "spectral", **kwargs: Any):
        super().__init__(dim, **kwargs)
        if normalize not in ("spectral", "none"):
            raise ValueError(f"normalize must be 'spectral' or 'none', got {normalize!r}")
        self.normalize = normalize

    def solve(self, sigma: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        if self.normalize == "none":
            return (2 * cross - sigma @ cross).T
        lam = torch.linalg.eigvalsh(sigma)[-1].abs().clamp_min(torch.finfo(sigma.dtype).tiny)
        return ((2 * cross - (sigma / lam) @ cross) / lam).T


class DirectPredPredictor(ClosedFormPredictor):
    """DirectPred (Tian et al. 2021): ``Σ̂ = EMA(Σ) = U diag(s) Uᵀ``; ``P = U diag(√(s/max s) + ε) Uᵀ``.

    Eigenvalues are clamped at 0 before the square root. Defaults (ours): ``ε = 0.1``, ``stat_momentum = 0.3``
    (weight of the previous Σ̂)."""

    def __init__(self, dim: int, eps: float = 0.1, stat_momentum: float = 0.3, **kwargs: Any):
        super().__init__(dim, stat_momentum=stat_momentum, **kwargs)
        self.eps = eps

    def solve(self, sigma: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        s, u = torch.linalg.eigh(sigma)
        s = s.clamp_min(0)
        p = (s / s.max().clamp_min(torch.finfo(s.dtype).tiny)).sqrt() + self.eps
        return (u * p) @ u.T


class DirectCopyPredictor(ClosedFormPredictor):
    """DirectCopy (Wang et al. 2021): ``P = Σ̂/‖Σ̂‖ + εI`` with ``Σ̂ = EMA(Σ)``.

    ``norm="spectral"`` (default: largest eigenvalue, the same scale as DirectPred's ``s/max s``) or ``"fro"``.
    Defaults (ours): ``ε = 0.1``, ``stat_momentum = 0.3``."""

    def __init__(self, dim: int, eps: float = 0.1, norm: str = "spectral", stat_momentum: float = 0.3,
                 **kwargs: Any):
        super().__init__(dim, stat_momentum=stat_momentum, **kwargs)
        if norm not in ("spectral", "fro"):
            raise ValueError(f"norm must be 'spectral' or 'fro', got {norm!r}")
        self.eps, self.norm = eps, norm

    def solve(self, sigma: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        if self.norm == "spectral":
            scale = torch.linalg.eigvalsh(sigma)[-1].abs().clamp_min(torch.finfo(sigma.dtype).tiny)
        else:
            scale = _fro(sigma)
        return sigma / scale + self.eps * _eye_like(sigma)


class VisserPredictor(ClosedFormPredictor):
    """``P ≈ √Σ`` by :func:`visser_sqrt` (``η = 0.5``, ``n_iter = 10``, normalized by ‖Σ‖_F by default)."""

    def __init__(self, dim: int, eta: float = 0.5, n_iter: int = 10, normalize: bool = True, **kwargs: Any):
        super().__init__(dim, **kwargs)
        self.eta, self.n_iter, self.normalize = eta, n_iter, normalize

    def solve(self, sigma: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        return visser_sqrt(sigma, self.eta, self.n_iter, self.normalize)


class NewtonSchulzPredictor(ClosedFormPredictor):
    """``P = A_n·√‖Σ‖_F ≈ √Σ`` by :func:`newton_schulz` with ``n = 9``."""

    def __init__(self, dim: int, n_iter: int = 9, **kwargs: Any):
        super().__init__(dim, **kwargs)
        self.n_iter = n_iter

    def solve(self, sigma: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        return newton_schulz_sqrt(sigma, self.n_iter)


class NS2Predictor(ClosedFormPredictor):
    """Two-stage Newton–Schulz (NS²): stage 1 gives ``S₁ = NS_n(Σ) ≈ Σ^{1/2}``; stage 2 runs Newton–Schulz
    again on ``S₁`` (its own normalization, ``n₂`` steps): ``P = NS_{n₂}(S₁) ≈ Σ^{1/4}``.

    Why a composition: every NS iterate is a polynomial in Σ, so all iterates commute, and restarting a second
    stage toward the *same* target ``√Σ`` from ``(A_n, B_n)`` reproduces exactly the single-stage iteration with
    ``n + n₂`` steps — nothing new. The composition instead yields a flatter spectrum (closer to orthogonal).
    Defaults ``n = n₂ = 7``."""

    def __init__(self, dim: int, n_iter: int = 7, second_iter: int = 7, **kwargs: Any):
        super().__init__(dim, **kwargs)
        self.n_iter, self.second_iter = n_iter, second_iter

    def solve(self, sigma: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        first = newton_schulz_sqrt(sigma, self.n_iter)
        return newton_schulz_sqrt(0.5 * (first + first.T), self.second_iter)


class StiefelPredictor(ClosedFormPredictor):
    """Stiefel predictor: with ``M = SᵀS``, ``B_n`` from :func:`newton_schulz` (``B_n ≈ (M/‖M‖_F)^{-1/2}``),
    ``P = B_n Sᵀ / ‖B_n‖_F``: a scalar multiple of the polar (orthogonal) factor of ``Sᵀ`` once NS has converged.

    ``source="sigma"`` (default): ``S = Σ`` (+ridge). Σ is symmetric PSD, so the exact polar factor is the
    orthogonal projector onto range(Σ) (``I`` when Σ has full rank); with finite ``n`` small eigenvalues are
    under-converged, so ``P`` acts as a soft spectral filter. ``source="cross"``: ``S = C = ZᵀZ'/b``, whose
    polar factor is the orthogonal Procrustes map from online to target projections (``z @ Pᵀ ∝ z @ UVᵀ`` for
    ``C = U diag Vᵀ``). ``n = 9`` by default."""

    def __init__(self, dim: int, n_iter: int = 9, source: str = "sigma", **kwargs: Any):
        super().__init__(dim, **kwargs)
        if source not in ("sigma", "cross"):
            raise ValueError(f"source must be 'sigma' or 'cross', got {source!r}")
        self.n_iter, self.source = n_iter, source
        self.uses_cross = source == "cross"

    def solve(self, sigma: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        s = cross if self.source == "cross" else sigma
        _, b, _ = newton_schulz(s.T @ s, self.n_iter)
        return b @ s.T / _fro(b)


PREDICTORS: dict[str, type[nn.Module]] = {
    "mlp": MLP,
    "lstsq": LeastSquaresPredictor,
    "neumann": NeumannPredictor,
    "directpred": DirectPredPredictor,
    "directcopy": DirectCopyPredictor,
    "visser": VisserPredictor,
    "newton_schulz": NewtonSchulzPredictor,
    "ns2": NS2Predictor,
    "stiefel": StiefelPredictor,
}


def build_predictor(kind: str, dim: int, hidden_dim: int = 4096, norm: str = "bn", **params: Any) -> nn.Module:
    """``"mlp"``: trainable ``MLP(dim, hidden_dim, dim, norm)``; otherwise the closed-form predictor
    ``PREDICTORS[kind](dim, **params)`` (``hidden_dim`` and ``norm`` unused)."""
    if kind not in PREDICTORS:
        raise ValueError(f"unknown predictor {kind!r}; known: {sorted(PREDICTORS)}")
    if kind == "mlp":
        return MLP(dim, hidden_dim, dim, norm=norm, **params)
    return PREDICTORS[kind](dim, **params)


__all__ = ["newton_schulz", "newton_schulz_sqrt", "visser_sqrt", "ClosedFormPredictor", "LeastSquaresPredictor",
           "NeumannPredictor", "DirectPredPredictor", "DirectCopyPredictor", "VisserPredictor",
           "NewtonSchulzPredictor", "NS2Predictor", "StiefelPredictor", "PREDICTORS", "build_predictor"]
