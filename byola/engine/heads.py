"""Projection and prediction heads, and the data-dependent initialization of BN-free norm layers.

Modality-free: heads act on ``[B, D]`` embeddings; ``calibrate_norms`` acts on any ``nn.Module``. The layers they
choose from (norm kinds, weight-standardized linears and convolutions) live in :mod:`byola.layers`.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ..layers import WSLinear, check_norm, group_count

def make_norm(norm: str, dim: int, groups: int = 32) -> nn.Module:
    """A normalization layer for ``[B, dim]`` features.

    ``"bn"``: BatchNorm1d; ``"ln"``: LayerNorm; ``"gn"``: GroupNorm with ``group_count(dim, groups)`` groups;
    ``"none"``: Identity.
    """
    check_norm(norm)
    if norm == "bn":
        return nn.BatchNorm1d(dim)
    if norm == "ln":
        return nn.LayerNorm(dim)
    if norm == "gn":
        return nn.GroupNorm(group_count(dim, groups), dim)
    return nn.Identity()


class MLP(nn.Module):
    """Linear → norm → ReLU → Linear: BYOL's projector (d→4096→256) and predictor (256→4096→256).

    Args:
        in_dim, hidden_dim, out_dim: layer widths.
        norm: ``"bn"`` (BYOL), ``"ln"``, ``"gn"`` or ``"none"`` (BN-free variants).
        groups: maximum group count for ``norm="gn"``.
        weight_standardization: both linear layers are :class:`WSLinear` (BN-free heads; same state-dict keys).
    """

    def __init__(self, in_dim: int, hidden_dim: int = 4096, out_dim: int = 256, norm: str = "bn", groups: int = 32,
                 weight_standardization: bool = False):
        super().__init__()
        check_norm(norm)
        for name, value in (("in_dim", in_dim), ("hidden_dim", hidden_dim), ("out_dim", out_dim)):
            if value < 1:
                raise ValueError(f"{name} must be positive, got {value}")
        self.in_dim, self.hidden_dim, self.out_dim, self.norm_kind = in_dim, hidden_dim, out_dim, norm
        self.weight_standardization = bool(weight_standardization)
        linear = WSLinear if weight_standardization else nn.Linear
        self.net = nn.Sequential(
            linear(in_dim, hidden_dim),
            make_norm(norm, hidden_dim, groups),
            nn.ReLU(inplace=True),
            linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor, z_target: torch.Tensor | None = None) -> torch.Tensor:
        """``x: [B, in_dim] -> [B, out_dim]``. ``z_target`` is accepted (and ignored) so that a trainable
        predictor and a closed-form one (``byola.engine.predictors``) share one call signature."""
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"MLP expects [B, {self.in_dim}], got {tuple(x.shape)}")
        return self.net(x)


def affine_norms(modules: Iterable[nn.Module]) -> list[nn.Module]:
    """The GroupNorm and LayerNorm layers with a per-channel affine inside ``modules`` (those
    :func:`calibrate_norms` can set)."""
    found: list[nn.Module] = []
    for module in modules:
        for m in module.modules():
            if (isinstance(m, nn.GroupNorm) and m.affine) or (
                    isinstance(m, nn.LayerNorm) and m.elementwise_affine and len(m.normalized_shape) == 1
                    and m.weight is not None and m.bias is not None):
                found.append(m)
    return found


@contextmanager
def calibrate_norms(modules: Iterable[nn.Module], eps: float = 1e-5, sync_dist: bool = True) -> Iterator[int]:
    """Data-dependent initialization of batch-independent norm layers (Richemond et al. 2020, "BYOL works even
    without batch statistics": a BN-free network should start with outputs as well scaled as a BatchNorm one).

    Inside the ``with`` block, every forward call of a GroupNorm / LayerNorm (per-channel affine) in ``modules``
    standardizes its output per channel over the batch (and spatial/temporal dims) and folds that into its affine:
    ``γ ← γ/σ``, ``β ← (β − μ)/σ`` with ``μ, σ²`` the channel's mean and variance of the layer's output
    (``σ = √(var + eps)``; a channel with variance ≤ ``eps`` is only centred). Layers are set in the order the
    forward pass reaches them, each seeing the already calibrated layers before it, so that on the calibration batch
    the network computes what a BatchNorm network (γ = 1, β = 0, batch statistics) would, up to the per-sample
    normalization kept by GN/LN; afterwards the layers stay batch-independent. Without this, per-sample normalization
    followed by ReLU and pooling gives every input nearly the same embedding at initialization (pairwise cosine ≈ 0.97
    on the digits benchmark; BatchNorm heads: 0.3), a start next to BYOL's collapsed solution. Under
    ``torch.distributed`` (``sync_dist``) the sums are all-reduced so every rank sets the same values. Yields the
    number of layers found; each layer is calibrated at most once (its first call inside the block).
    """
    layers = affine_norms(modules)
    done: set[int] = set()
    sync = sync_dist and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def hook(layer: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if id(layer) in done:
            return None
        done.add(id(layer))
        if output.dim() < 2 or output.shape[1] != layer.weight.numel():
            raise ValueError(f"calibrate_norms: {type(layer).__name__} output {tuple(output.shape)} has no channel "
                             f"dim 1 of size {layer.weight.numel()}")
        dims = [0, *range(2, output.dim())]
        y = output.float()
        count = torch.full((y.shape[1],), y.numel() / y.shape[1], device=y.device)
        stats = torch.stack([y.sum(dims), (y * y).sum(dims), count])
        if sync:
            dist.all_reduce(stats)
        mean = stats[0] / stats[2]
        var = (stats[1] / stats[2] - mean * mean).clamp_min(0)
        std = torch.where(var > eps, (var + eps).sqrt(), torch.ones_like(var))  # constant channel: centre only
        with torch.no_grad():
            layer.weight.div_(std.to(layer.weight.dtype))
            layer.bias.sub_(mean.to(layer.bias.dtype)).div_(std.to(layer.bias.dtype))
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return ((y - mean.view(shape)) / std.view(shape)).to(output.dtype)

    handles = [layer.register_forward_hook(hook) for layer in layers]
    try:
        yield len(layers)
    finally:
        for handle in handles:
            handle.remove()


__all__ = ["MLP", "make_norm", "affine_norms", "calibrate_norms"]
