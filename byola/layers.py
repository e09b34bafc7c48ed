"""Modality-free layers shared by encoders and heads: the normalization kinds (BatchNorm, LayerNorm, GroupNorm,
none), weight-standardized linear and convolution layers, and the conversion of a BatchNorm network into a BN-free
one (``convert_backbone``), which records what it changed in the encoder's ``hparams`` so checkpoints rebuild it.
"""
from __future__ import annotations

import torch
from torch import nn

NORMS = ("bn", "ln", "gn", "none")


def check_norm(norm: str) -> None:
    """Raise ``ValueError`` unless ``norm`` is one of :data:`NORMS`."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def group_count(channels: int, groups: int = 32, min_channels: int = 2) -> int:
    """Largest divisor of ``channels`` not above ``groups`` nor ``channels // min_channels`` (at least 1).

    GroupNorm needs an exact split; ``min_channels`` keeps at least that many channels per group, so narrow
    layers do not silently become instance norm (one channel per group), whose per-channel normalization
    followed by global pooling makes every input's embedding nearly the same.
    """
    if channels < 1 or groups < 1 or min_channels < 1:
        raise ValueError(f"channels, groups and min_channels must be positive, got {channels}, {groups}, "
                         f"{min_channels}")
    cap = max(1, min(groups, channels // min_channels))
    return max(g for g in range(1, cap + 1) if channels % g == 0)


class WSLinear(nn.Linear):
    """Linear layer with weight standardization: each output unit's weights are standardized to zero mean and unit
    variance over the inputs before use (Qiao et al. 2019's WS applied to a linear layer, i.e. a 1×1 convolution).
    Zero-mean weights make the unit blind to the per-sample mean of its input (``w·x = w·(x − mean(x))``)."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        var, mean = torch.var_mean(w, dim=1, keepdim=True, unbiased=False)
        return nn.functional.linear(x, (w - mean) / torch.sqrt(var + self.eps), self.bias)


class WSConv2d(nn.Conv2d):
    """Conv2d with weight standardization (Qiao et al. 2019): each output filter's weights are standardized
    to zero mean and unit variance (over in-channels × kernel) before the convolution. Pairs with GroupNorm
    or LayerNorm in BN-free networks."""

    def __init__(self, *args, eps: float = 1e-5, **kwargs):
        super().__init__(*args, **kwargs)
        self.eps = eps

    def standardized_weight(self) -> torch.Tensor:
        w = self.weight
        dims = tuple(range(1, w.dim()))
        mean = w.mean(dim=dims, keepdim=True)
        var = w.var(dim=dims, keepdim=True, unbiased=False)
        return (w - mean) / torch.sqrt(var + self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


def _norm_replacement(layer: nn.modules.batchnorm._BatchNorm, norm: str, groups: int) -> nn.Module:
    channels = layer.num_features
    if norm == "bn":
        return layer
    if norm == "gn":
        return nn.GroupNorm(group_count(channels, groups), channels)
    if norm == "ln":
        # GroupNorm with one group normalizes over all non-batch dims: LayerNorm for [B, C] and [B, C, ...].
        return nn.GroupNorm(1, channels)
    return nn.Identity()


def replace_batchnorm(module: nn.Module, norm: str, groups: int = 32) -> nn.Module:
    """Replace every BatchNorm{1,2,3}d inside ``module`` (in place) by ``norm``; returns ``module``.

    ``"gn"``: GroupNorm(group_count(C, groups), C); ``"ln"``: GroupNorm(1, C) (layer norm over C and the
    spatial/temporal dims); ``"none"``: Identity; ``"bn"``: unchanged. New layers are freshly initialized and
    placed on the replaced layer's device and dtype.
    """
    check_norm(norm)
    if norm == "bn":
        return module
    for name, child in list(module.named_children()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            new = _norm_replacement(child, norm, groups)
            ref = next(iter(child.parameters()), None) if child.affine else child.running_mean
            if ref is not None:
                new = new.to(device=ref.device, dtype=ref.dtype)
            setattr(module, name, new)
        else:
            replace_batchnorm(child, norm, groups)
    return module


def standardize_convs(module: nn.Module) -> nn.Module:
    """Replace every plain ``nn.Conv2d`` inside ``module`` (in place) by a :class:`WSConv2d` with the same
    hyperparameters and the same weights; returns ``module``."""
    for name, child in list(module.named_children()):
        if type(child) is nn.Conv2d:
            ws = WSConv2d(
                child.in_channels, child.out_channels, child.kernel_size, stride=child.stride,
                padding=child.padding, dilation=child.dilation, groups=child.groups, bias=child.bias is not None,
                padding_mode=child.padding_mode, device=child.weight.device, dtype=child.weight.dtype,
            )
            ws.load_state_dict(child.state_dict())
            setattr(module, name, ws)
        else:
            standardize_convs(child)
    return module


def has_batchnorm(module: nn.Module) -> bool:
    """Whether any BatchNorm layer remains in ``module``."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def convert_backbone(encoder: nn.Module, backbone_norm: str | None = None, weight_standardization: bool = False,
                     norm_groups: int = 32) -> nn.Module:
    """Make ``encoder`` BN-free in place and record it: ``backbone_norm`` (``"gn"``, ``"ln"``, ``"none"``) replaces
    its BatchNorm layers (:func:`replace_batchnorm`, at most ``norm_groups`` GroupNorm groups), and
    ``weight_standardization`` its Conv2d layers (:func:`standardize_convs`). An encoder with an ``hparams`` dict
    (every registered encoder) gets these settings added, so that its ``config()`` (and a checkpoint) rebuilds the
    converted architecture. ``None``/``"bn"`` and no standardization leave it unchanged. An encoder whose
    ``hparams`` already record a conversion raises ``ValueError`` (a second conversion would make the network and
    its record disagree). Returns ``encoder``."""
    if backbone_norm is not None:
        check_norm(backbone_norm)
    if backbone_norm in (None, "bn") and not weight_standardization:
        return encoder
    recorded = getattr(encoder, "hparams", None)
    if isinstance(recorded, dict) and (recorded.get("backbone_norm") or recorded.get("weight_standardization")):
        raise ValueError(f"{type(encoder).__name__} is already converted (backbone_norm="
                         f"{recorded.get('backbone_norm')!r}, weight_standardization="
                         f"{bool(recorded.get('weight_standardization'))}): build a new encoder instead")
    if backbone_norm not in (None, "bn"):
        replace_batchnorm(encoder, backbone_norm, norm_groups)
    if weight_standardization:
        standardize_convs(encoder)
    if isinstance(getattr(encoder, "hparams", None), dict):
        encoder.hparams = {**encoder.hparams, "backbone_norm": backbone_norm,
                           "weight_standardization": bool(weight_standardization)}
        if backbone_norm == "gn":
            encoder.hparams["norm_groups"] = int(norm_groups)
    return encoder


__all__ = ["NORMS", "check_norm", "group_count", "WSLinear", "WSConv2d", "replace_batchnorm", "standardize_convs",
           "has_batchnorm", "convert_backbone"]
