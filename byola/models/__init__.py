"""Encoders and their registry: ``build_encoder(name, **params)`` rebuilds an encoder from its ``config()``."""
from __future__ import annotations

from torch import nn

from byola.models.audio import AudioNTT2020, AudioNTT2022

ENCODERS: dict[str, type[nn.Module]] = {
    "AudioNTT2020": AudioNTT2020,
    "AudioNTT2022": AudioNTT2022,
}


def build_encoder(name: str, **params) -> nn.Module:
    """Instantiate the registered encoder ``name`` with ``params``; an unknown name raises ``ValueError``
    listing the known ones."""
    try:
        cls = ENCODERS[name]
    except KeyError:
        raise ValueError(f"unknown encoder {name!r}; known encoders: {', '.join(sorted(ENCODERS))}") from None
    return cls(**params)


__all__ = ["ENCODERS", "build_encoder", "AudioNTT2020", "AudioNTT2022"]
