"""The HEAR 2021 API (Turian et al.) on top of `byola.embed`, so byola models plug into hear-eval-kit unchanged.

    model = load_model("model.safetensors")          # "" or None: the model shipped in pretrained/
    get_scene_embeddings(audio [n_sounds, n_samples], model) -> [n_sounds, D]
    get_timestamp_embeddings(audio, model) -> ([n_sounds, T, D], [n_sounds, T] in milliseconds)

Audio is expected at `model.sample_rate` (16 kHz). Scene embeddings are BYOL-A clip embeddings (max + mean over
time); timestamp embeddings are the encoder's frame embeddings, at the frame centres.
"""
from __future__ import annotations

import torch

from .embed import Embedder, load


def load_model(model_file_path: str = "", device: str | None = None) -> Embedder:
    """Load a byola checkpoint with the attributes HEAR's validator checks."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load(model_file_path or None, device=device)
    model.scene_embedding_size = model.embed_dim
    model.timestamp_embedding_size = model.embed_dim
    return model


def _check(audio: torch.Tensor, model: Embedder) -> torch.Tensor:
    if audio.ndim != 2:
        raise ValueError(f"audio must be [n_sounds, n_samples], got shape {tuple(audio.shape)}")
    return audio.to(model.device, torch.float32)


def get_scene_embeddings(audio: torch.Tensor, model: Embedder) -> torch.Tensor:
    """One float32 embedding per sound: [n_sounds, scene_embedding_size]."""
    return model.embed_batch(_check(audio, model)).float()


def get_timestamp_embeddings(audio: torch.Tensor, model: Embedder) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame embeddings [n_sounds, T, D] and their centre timestamps in milliseconds [n_sounds, T]."""
    frames = model.embed_frames_batch(_check(audio, model)).float()
    stamps = model.frame_timestamps_ms(frames.shape[1]).to(frames.device)
    return frames, stamps.expand(frames.shape[0], -1).contiguous()
