"""BYOL's regression loss and the cross-similarity losses of Self-Labeling Refinement (2022).

Every loss takes online predictions ``p: [B, D]`` and target projections ``z: [B, D]`` and detaches ``z``
itself, so callers cannot leak gradient into a target network by mistake. Losses are computed in float32
(safe under autocast).

The cross-similarity losses work on the ``B × B`` cosine matrix ``S_ij = cos(p_i, z_j)``. The diagonal
(``i = j``) holds the positive pairs that :func:`byol_loss` already pulls together; an off-diagonal pair with
a high similarity is taken as a further positive ("self-labeled") and pulled with the same ``2 − 2·S_ij``
term. The paper's exact formulas are not public in full; the ones implemented here are::

    w_ij  = stopgrad(weight(S_ij))  for i ≠ j,  w_ii = 0
    loss  = Σ_ij w_ij · (2 − 2·S_ij) / Σ_ij w_ij        (0 when no pair is selected)

i.e. a weighted mean over the selected pairs, on the same scale as :func:`byol_loss`. The weights carry no
gradient: they are labels, the similarities being pulled are not. The two losses differ only in ``weight``:

* CCSL (:func:`cross_cosine_loss`): ``weight(s) = clamp((s − θ⁻) / (θ⁺ − θ⁻), 0, 1)`` — pairs above
  θ⁺ = 0.8 count fully, like the positive pair; pairs below θ⁻ = 0.2 are ignored; in between the weight rises
  linearly. With ``ramp=False`` the in-between pairs are ignored too (``weight = 1[s > θ⁺]``).
* CSSL (:func:`cross_sigmoid_loss`): ``weight(s) = 1[s > θ⁻] · sigmoid((s − center) / temperature)`` with
  ``center = (θ⁺ + θ⁻) / 2 = 0.5`` and ``temperature = 0.1`` by default — a smooth version of the same
  selection (≈0.95 at θ⁺, ≈0.05 just above θ⁻, 0 below θ⁻).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F


def _check_pair(p: torch.Tensor, z: torch.Tensor) -> None:
    if p.dim() != 2 or p.shape != z.shape:
        raise ValueError(f"expected p and z of the same shape [B, D], got {tuple(p.shape)} and {tuple(z.shape)}")


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``mean_i (2 − 2·cos(p_i, z_i))``: 0 for aligned, 2 for orthogonal, 4 for opposite vectors.

    ``z`` (the target projection) is detached here. Summing the two directions of a view pair gives BYOL's
    symmetric loss (range 0–8 in that case)."""
    _check_pair(p, z)
    p = F.normalize(p.float(), dim=-1)
    z = F.normalize(z.detach().float(), dim=-1)
    return (2 - 2 * (p * z).sum(dim=-1)).mean()


def cross_similarity(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``S_ij = cos(p_i, z_j)``, ``[B, B]`` in float32, with ``z`` detached."""
    _check_pair(p, z)
    return F.normalize(p.float(), dim=-1) @ F.normalize(z.detach().float(), dim=-1).T


def _weighted_pull(sim: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    weight = weight.detach() * (1 - torch.eye(sim.shape[0], device=sim.device, dtype=sim.dtype))
    return (weight * (2 - 2 * sim)).sum() / weight.sum().clamp_min(torch.finfo(sim.dtype).tiny)


def _check_thresholds(theta_pos: float, theta_neg: float) -> None:
    if not -1 <= theta_neg < theta_pos <= 1:
        raise ValueError(f"need -1 <= theta_neg < theta_pos <= 1, got theta_neg={theta_neg}, theta_pos={theta_pos}")


def cross_cosine_loss(p: torch.Tensor, z: torch.Tensor, theta_pos: float = 0.8, theta_neg: float = 0.2,
                      ramp: bool = True) -> torch.Tensor:
    """Cross-cosine similarity loss (CCSL); formula in the module docstring."""
    _check_thresholds(theta_pos, theta_neg)
    sim = cross_similarity(p, z)
    if ramp:
        weight = ((sim - theta_neg) / (theta_pos - theta_neg)).clamp(0, 1)
    else:
        weight = (sim > theta_pos).to(sim.dtype)
    return _weighted_pull(sim, weight)


def cross_sigmoid_loss(p: torch.Tensor, z: torch.Tensor, theta_pos: float = 0.8, theta_neg: float = 0.2,
                       center: float | None = None, temperature: float = 0.1) -> torch.Tensor:
    """Cross-sigmoid similarity loss (CSSL); formula in the module docstring. ``center`` defaults to
    ``(theta_pos + theta_neg) / 2``."""
    _check_thresholds(theta_pos, theta_neg)
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    center = (theta_pos + theta_neg) / 2 if center is None else center
    sim = cross_similarity(p, z)
    weight = torch.sigmoid((sim - center) / temperature) * (sim > theta_neg).to(sim.dtype)
    return _weighted_pull(sim, weight)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "byol": byol_loss,
    "ccsl": cross_cosine_loss,
    "cssl": cross_sigmoid_loss,
}


@dataclass(frozen=True)
class LossTerm:
    """A declared extra loss term: ``weight · LOSSES[name](p, z, **params)``, applied to every view pair."""

    name: str
    weight: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.name not in LOSSES:
            raise ValueError(f"unknown loss {self.name!r}; known: {sorted(LOSSES)}")

    def __call__(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return LOSSES[self.name](p, z, **self.params)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "weight": self.weight, "params": dict(self.params)}


__all__ = ["byol_loss", "cross_similarity", "cross_cosine_loss", "cross_sigmoid_loss", "LOSSES", "LossTerm"]
