"""Encoders and their registry: ``build_encoder(name, **params)`` rebuilds an encoder from its ``config()``."""
from __future__ import annotations

from torch import nn

from byola.layers import convert_backbone
from byola.models.audio import AudioNTT2020, AudioNTT2022
from byola.models.base import Encoder, EncoderBase
from byola.models.image import IMAGE_ENCODERS, ResNet18, ResNet18CIFAR, ResNet50, SmallCNN
from byola.models.inference import optimize_for_inference

ENCODERS: dict[str, type[EncoderBase]] = {
    "AudioNTT2020": AudioNTT2020,
    "AudioNTT2022": AudioNTT2022,
    **IMAGE_ENCODERS,  # resnet18_cifar, resnet18, resnet50, small_cnn
}


def build_encoder(name: str, backbone_norm: str | None = None, weight_standardization: bool = False,
                  norm_groups: int = 32, **params) -> nn.Module:
    """Instantiate the registered encoder ``name`` with ``params``; an unknown name raises ``ValueError``
    listing the known ones.

    ``backbone_norm`` (``"gn"``, ``"ln"``, ``"none"``; BN-free methods), ``weight_standardization`` and
    ``norm_groups`` (the largest GroupNorm group count for ``"gn"``) convert the encoder
    (:func:`byola.layers.convert_backbone`); they are then part of its ``config()``, so a BN-free checkpoint
    rebuilds the architecture it was trained with."""
    try:
        cls = ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(sorted(ENCODERS))}") from None
    return convert_backbone(cls(**params), backbone_norm, weight_standardization, norm_groups)


__all__ = ["ENCODERS", "Encoder", "EncoderBase", "build_encoder", "optimize_for_inference", "AudioNTT2020",
           "AudioNTT2022", "ResNet18CIFAR", "ResNet18", "ResNet50", "SmallCNN"]
