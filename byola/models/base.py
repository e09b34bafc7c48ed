"""The contract of every registered encoder (audio and image): :class:`Encoder`, and :class:`EncoderBase`, the
shared implementation of ``config()``."""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn


@runtime_checkable
class Encoder(Protocol):
    """What checkpoints, embedders and methods rely on.

    - ``name``: the key in :data:`byola.models.ENCODERS`; ``embed_dim``: the embedding width.
    - ``forward(x) -> [B, embed_dim]``: the clip or image embedding, a pooling of ``frame_embeddings(x)``
      (audio: max + mean over time; images: mean over positions).
    - ``frame_embeddings(x) -> [B, N, embed_dim]``: the local embeddings (audio: time frames, ``frame_hop`` input
      frames each; images: the positions of the last feature map, row-major).
    - ``config() -> {"name", "params"}``: ``build_encoder(name, **params)`` rebuilds the architecture (including
      the BN-free settings recorded by :func:`byola.layers.convert_backbone`).
    """

    name: str
    embed_dim: int

    def forward(self, x: Tensor) -> Tensor: ...

    def frame_embeddings(self, x: Tensor) -> Tensor: ...

    def config(self) -> dict[str, Any]: ...


class EncoderBase(nn.Module):
    """Base class of the registered encoders: ``hparams`` holds the constructor's arguments, ``config()`` returns
    them with the registry name."""

    name: str
    hparams: dict[str, Any]
    embed_dim: int

    def config(self) -> dict[str, Any]:
        """``{"name", "params"}``; ``build_encoder(name, **params)`` rebuilds this architecture."""
        return {"name": self.name, "params": dict(self.hparams)}
