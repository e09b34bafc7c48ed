"""Image encoders: torchvision ResNets without their classifier, and a small CNN for tiny images.

Every encoder implements :class:`byola.models.base.Encoder`: ``[B, C, H, W]`` -> ``[B, embed_dim]`` (global average
pooling of the last feature map, whose positions are ``frame_embeddings``), ``embed_dim`` and ``config()``, and is
registered in :data:`byola.models.ENCODERS`.

* ``resnet18_cifar``: ResNet-18 with the CIFAR stem of SimCLR/BYOL reproductions on 32×32 images (first
  convolution 3×3 stride 1, no max-pool); 512-d.
* ``resnet18``, ``resnet50``: torchvision's ImageNet layout (7×7 stride-2 convolution + max-pool); 512-d / 2048-d.
* ``small_cnn``: three 3×3 conv-BN-ReLU stages (stride 1, 2, 2), for 8–32 px images on a CPU (our choice, used by
  ``benchmarks/variants_table.py`` on scikit-learn's 8×8 digits).

ResNet state-dict keys are torchvision's (``conv1.*``, ``bn1.*``, ``layer1.*`` ...) without ``fc.*``, so
torchvision weights load with ``strict=False`` after dropping ``fc``.
"""
from __future__ import annotations

import torch
from torch import nn

from byola.extras import optional_module
from byola.models.base import EncoderBase

_tv_models = optional_module("torchvision.models", "image")  # the `image` extra

__all__ = ["ResNet18CIFAR", "ResNet18", "ResNet50", "SmallCNN", "IMAGE_ENCODERS"]


def _check_input(x: torch.Tensor, in_channels: int, name: str) -> None:
    if x.dim() != 4 or x.shape[1] != in_channels:
        raise ValueError(f"{name} expects images [B, {in_channels}, H, W], got {tuple(x.shape)}")


def _positions(features: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, H*W, C]`` (row-major positions)."""
    return features.flatten(2).transpose(1, 2)


class _TorchvisionResNet(EncoderBase):
    """A torchvision ResNet with ``fc`` replaced by the identity (the pooled features are the embedding)."""

    _builder = "resnet18"  # torchvision.models builder
    _cifar_stem = False

    def __init__(self, in_channels: int = 3, zero_init_residual: bool = False) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be positive, got {in_channels}")
        self.hparams = {"in_channels": int(in_channels), "zero_init_residual": bool(zero_init_residual)}
        net = getattr(_tv_models, self._builder)(weights=None, zero_init_residual=zero_init_residual)
        if self._cifar_stem or in_channels != 3:
            k, s, p = (3, 1, 1) if self._cifar_stem else (7, 2, 3)
            net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=k, stride=s, padding=p, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # torchvision's init
        if self._cifar_stem:
            net.maxpool = nn.Identity()
        self.embed_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.in_channels = int(in_channels)
        # Registered as children of this module (not under a "net." prefix) so keys are torchvision's.
        for child_name, child in net.named_children():
            self.add_module(child_name, child)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, self.name)
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self._features(x)), 1)

    def frame_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map's positions ``[B, h*w, embed_dim]`` (their mean is ``forward(x)``)."""
        return _positions(self._features(x))


class ResNet18CIFAR(_TorchvisionResNet):
    """ResNet-18, CIFAR stem (3×3 stride-1 first convolution, no max-pool), 512-d."""

    name = "resnet18_cifar"
    _cifar_stem = True


class ResNet18(_TorchvisionResNet):
    """ResNet-18, ImageNet stem, 512-d."""

    name = "resnet18"


class ResNet50(_TorchvisionResNet):
    """ResNet-50, ImageNet stem, 2048-d."""

    name = "resnet50"
    _builder = "resnet50"


class SmallCNN(EncoderBase):
    """Conv3×3-BN-ReLU stages with ``channels`` widths (first stage stride 1, the others stride 2), global average
    pooling; ``embed_dim = channels[-1]``. For tiny images (8×8 digits upsampled to 16 px) on a CPU."""

    name = "small_cnn"

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] | list[int] = (32, 64, 128)) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        if in_channels < 1 or not channels or min(channels) < 1:
            raise ValueError(f"in_channels and channels must be positive, got {in_channels}, {channels}")
        self.hparams = {"in_channels": int(in_channels), "channels": list(channels)}
        self.in_channels, self.embed_dim = int(in_channels), channels[-1]
        layers: list[nn.Module] = []
        prev = in_channels
        for i, c in enumerate(channels):
            layers += [nn.Conv2d(prev, c, 3, stride=1 if i == 0 else 2, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            prev = c
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, self.name)
        return self.features(x).mean(dim=(-2, -1))

    def frame_embeddings(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map's positions ``[B, h*w, embed_dim]`` (their mean is ``forward(x)``)."""
        _check_input(x, self.in_channels, self.name)
        return _positions(self.features(x))


IMAGE_ENCODERS: dict[str, type[nn.Module]] = {cls.name: cls for cls in (ResNet18CIFAR, ResNet18, ResNet50, SmallCNN)}
