"""BYOL-A audio encoders: AudioNTT2020 (BYOL-A v1) and AudioNTT2022 (BYOL-A v2).

Both take a log-mel spectrogram ``[B, 1, F, T]`` (or ``[B, F, T]``) and keep the official parameter layout
(``features.{0,1,4,5,8,9}.*`` for conv/BN, ``fc.{0,3}.*`` for the two linears) so that published weights load
as they are. Conv features ``[B, C, F', T']`` become frames ``[B, T', F'*C]``, flattened mel-major and
channel-minor (the order the official ``fc.0`` weights expect).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from byola.models.base import EncoderBase


def _conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    """Conv3x3 -> BN -> ReLU -> 2x2 max-pool (4 modules, so block k's conv sits at index 4k)."""
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, stride=2),
    ]


def _to_frames(x: Tensor) -> Tensor:
    """``[B, C, F, T]`` -> ``[B, T, F*C]`` (mel-major, channel-minor)."""
    b, c, f, t = x.shape
    return x.permute(0, 3, 2, 1).reshape(b, t, f * c)


class _AudioNTT(EncoderBase):
    """Shared body: ``conv_layers`` conv blocks, then a two-layer MLP applied to every frame.

    With ``stack`` the frame embedding is the flattened conv features followed by the MLP output (BYOL-A v2);
    otherwise it is the MLP output alone (v1). The clip embedding is max + mean of the frames over time.
    """

    def __init__(self, n_mels: int, d: int, conv_layers: int, conv_channels: int, mlp_hidden_d: int,
                 mlp_out_d: int, stack: bool, dropout: float) -> None:
        super().__init__()
        if n_mels < 2 ** conv_layers:
            raise ValueError(f"n_mels={n_mels} is too small for {conv_layers} 2x2 poolings")
        self.n_mels = n_mels
        self.conv_layers = conv_layers
        self.conv_channels = conv_channels
        self.frame_hop = 2 ** conv_layers
        self.conv_d = conv_channels * (n_mels // self.frame_hop)
        self.stack = stack
        self.embed_dim = d
        self.micro_batch: int | None = None  # see frame_embeddings; set by optimize_for_inference
        blocks: list[nn.Module] = []
        for i in range(conv_layers):
            blocks += _conv_block(1 if i == 0 else conv_channels, conv_channels)
        self.features = nn.Sequential(*blocks)
        self.fc = nn.Sequential(
            nn.Linear(self.conv_d, mlp_hidden_d),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden_d, mlp_out_d),
            nn.ReLU(inplace=True),
        )
        # Per layer_features() entry: (input frames per output frame, feature dimension).
        self.layer_hops = tuple(2 ** (i + 1) for i in range(conv_layers)) + (self.frame_hop,) * 2
        self.layer_dims = tuple(conv_channels * (n_mels // 2 ** (i + 1)) for i in range(conv_layers)) + (
            mlp_hidden_d, d)

    def _check_input(self, x: Tensor) -> Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(1)
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != self.n_mels:
            raise ValueError(f"{self.name} expects log-mel [B, 1, {self.n_mels}, T] or [B, {self.n_mels}, T], "
                             f"got {list(x.shape)}")
        if x.shape[3] < self.frame_hop:
            raise ValueError(f"{self.name} needs at least {self.frame_hop} time frames, got {x.shape[3]}")
        return x

    def _stack(self, conv: Tensor, out: Tensor) -> Tensor:
        return torch.cat([conv, out], dim=-1) if self.stack else out

    def frame_embeddings(self, x: Tensor) -> Tensor:
        """Log-mel ``[B, 1, F, T]`` -> frame embeddings ``[B, T // frame_hop, embed_dim]``.

        With ``micro_batch`` set, the batch runs in chunks of that many clips (same result): the first conv block's
        output is 64x the input size, and chunks that stay in cache can be faster on CPU.
        """
        x = self._check_input(x)
        if self.micro_batch and x.shape[0] > self.micro_batch:
            return torch.cat([self._frames(chunk) for chunk in x.split(self.micro_batch)])
        return self._frames(x)

    def _frames(self, x: Tensor) -> Tensor:
        conv = _to_frames(self.features(x))
        return self._stack(conv, self.fc(conv))

    def forward(self, x: Tensor) -> Tensor:
        """Log-mel ``[B, 1, F, T]`` -> clip embedding ``[B, embed_dim]`` (max + mean over time)."""
        frames = self.frame_embeddings(x)
        return frames.amax(dim=1) + frames.mean(dim=1)

    def layer_features(self, x: Tensor) -> list[Tensor]:
        """Every block's output as a frame sequence, for SUPERB-style weighted sums.

        Returns ``conv_layers`` conv-block outputs ``[B, T // 2**(i+1), C * (F // 2**(i+1))]``, then the MLP hidden
        layer ``[B, T // frame_hop, mlp_hidden_d]`` and the final frame embedding ``[B, T // frame_hop, embed_dim]``
        (the last entry equals ``frame_embeddings(x)``). Shapes are listed in ``layer_hops`` / ``layer_dims``.
        """
        x = self._check_input(x)
        outs = []
        for i in range(self.conv_layers):
            x = self.features[4 * i: 4 * i + 4](x)
            outs.append(_to_frames(x))
        hidden = self.fc[:3](outs[-1])
        return outs + [hidden, self._stack(outs[-1], self.fc[3:](hidden))]


class AudioNTT2020(_AudioNTT):
    """BYOL-A v1 encoder: 3 conv blocks of ``conv_channels`` channels, then Linear(C*F/8 -> hidden), ReLU, Dropout,
    Linear(hidden -> d), ReLU. ``mlp_hidden_d`` defaults to ``d`` as in the paper. ``frame_hop`` = 8."""

    name = "AudioNTT2020"

    def __init__(self, n_mels: int = 64, d: int = 512, mlp_hidden_d: int | None = None, conv_channels: int = 64,
                 dropout: float = 0.3) -> None:
        mlp_hidden_d = mlp_hidden_d or d
        super().__init__(n_mels, d, conv_layers=3, conv_channels=conv_channels, mlp_hidden_d=mlp_hidden_d,
                         mlp_out_d=d, stack=False, dropout=dropout)
        self.hparams = dict(n_mels=n_mels, d=d, mlp_hidden_d=mlp_hidden_d, conv_channels=conv_channels,
                            dropout=dropout)


class AudioNTT2022(_AudioNTT):
    """BYOL-A v2 encoder: 2 conv blocks, an MLP Linear(C*F/4 -> mlp_hidden_d), ReLU, Dropout,
    Linear(mlp_hidden_d -> d - C*F/4), ReLU; the frame embedding concatenates the flattened conv features (first)
    with the MLP output, so its width is ``d`` (3072 = 1024 + 2048 for 64 mels). ``frame_hop`` = 4."""

    name = "AudioNTT2022"

    def __init__(self, n_mels: int = 64, d: int = 3072, mlp_hidden_d: int = 2048, conv_channels: int = 64,
                 dropout: float = 0.3) -> None:
        conv_d = conv_channels * (n_mels // 4)
        if d <= conv_d:
            raise ValueError(f"AudioNTT2022 needs d > conv feature dim {conv_d} (= {conv_channels} * {n_mels} // 4), "
                             f"got d={d}")
        super().__init__(n_mels, d, conv_layers=2, conv_channels=conv_channels, mlp_hidden_d=mlp_hidden_d,
                         mlp_out_d=d - conv_d, stack=True, dropout=dropout)
        self.hparams = dict(n_mels=n_mels, d=d, mlp_hidden_d=mlp_hidden_d, conv_channels=conv_channels,
                            dropout=dropout)
