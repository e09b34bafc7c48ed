"""The HEAR API checker accepts a conforming module and names each kind of violation."""
from __future__ import annotations

import types

import pytest
import torch

from byola.evaluation.hear_check import HearValidationError, validate_hear_module


class TinyModel(torch.nn.Module):
    sample_rate = 16000
    scene_embedding_size = 8
    timestamp_embedding_size = 8

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(160, 8)

    def frames(self, audio: torch.Tensor) -> torch.Tensor:
        pad = (-audio.shape[1]) % 160
        return self.proj(torch.nn.functional.pad(audio, (0, pad)).unfold(1, 160, 160))


def make_module(ts_scale: float = 1000.0, dtype=torch.float32, jitter: bool = False, **attrs) -> types.ModuleType:
    mod = types.ModuleType("fake_hear")

    def load_model(path: str = "") -> TinyModel:
        model = TinyModel()
        for k, v in attrs.items():
            setattr(model, k, v)
        return model

    def get_timestamp_embeddings(audio, model):
        emb = model.frames(audio).detach()
        centers = (torch.arange(emb.shape[1], dtype=torch.float32) + 0.5) * 160 / model.sample_rate * ts_scale
        if jitter and len(centers) > 2:
            centers[1] += 0.3 * (centers[1] - centers[0])
        return emb.to(dtype), centers.expand(len(audio), -1).clone()

    def get_scene_embeddings(audio, model):
        return model.frames(audio).detach().mean(dim=1).to(dtype)

    mod.load_model, mod.get_timestamp_embeddings, mod.get_scene_embeddings = (
        load_model, get_timestamp_embeddings, get_scene_embeddings)
    return mod


def test_conforming_module_passes():
    summary = validate_hear_module(make_module())
    assert summary["scene_embedding_size"] == 8 and summary["hops_ms"][1.0] == pytest.approx(10.0)


@pytest.mark.parametrize("module,match", [
    (make_module(ts_scale=1.0), "not milliseconds"),
    (make_module(ts_scale=2000.0), "outside the clip"),
    (make_module(dtype=torch.float64), "dtype torch.float64"),
    (make_module(jitter=True), "not evenly spaced"),
    (make_module(scene_embedding_size=16), r"shape \(2, 8\), expected \(2, 16\)"),
    (make_module(sample_rate=16000.0), "sample_rate must be a positive int"),
])
def test_violations_are_named(module, match):
    with pytest.raises(HearValidationError, match=match):
        validate_hear_module(module)


def test_missing_function():
    mod = make_module()
    del mod.get_scene_embeddings
    with pytest.raises(HearValidationError, match="missing function get_scene_embeddings"):
        validate_hear_module(mod)
