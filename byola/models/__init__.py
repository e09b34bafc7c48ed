"""Encoders and their registry: ``build_encoder(name, **params)`` rebuilds an encoder from its ``config()``."""
from __future__ import annotations

from torch import nn

from byola.models.audio import AudioNTT2020, AudioNTT2022
from byola.models.image import IMAGE_ENCODERS, ResNet18, ResNet18CIFAR, ResNet50, SmallCNN
from byola.models.inference import optimize_for_inference

ENCODERS: dict[str, type[nn.Module]] = {
    "AudioNTT2020": AudioNTT2020,
    "AudioNTT2022": AudioNTT2022,
    **IMAGE_ENCODERS,  # resnet18_cifar, resnet18, resnet50, small_cnn
}


def build_encoder(name: str, **params) -> nn.Module:
    """Instantiate the registered encoder ``name`` with ``params``; an unknown name raises ``ValueError``
    listing the known ones."""
    try:
        cls = ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(sorted(ENCODERS))}") from None
    return cls(**params)


__all__ = ["ENCODERS", "build_encoder", "optimize_for_inference", "AudioNTT2020", "AudioNTT2022", "ResNet18CIFAR",
           "ResNet18", "ResNet50", "SmallCNN"]
