"""byola.hear passes the checks HEAR's validator makes (byola.evaluation.hear_check)."""
from __future__ import annotations

import pytest
import torch

from byola import hear
from byola.checkpoint import save_checkpoint
from byola.evaluation.hear_check import HearValidationError, validate_hear_module
from byola.frontend import LogMelSpectrogram
from byola.models import build_encoder
from byola.norm import NormStats


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hear") / "m.safetensors"
    save_checkpoint(path, build_encoder("AudioNTT2022", n_mels=64, d=1536, mlp_hidden_d=256),
                    LogMelSpectrogram().config(), NormStats(-7.0, 5.0), {"source": "test"})
    return path


def test_hear_api_passes_validator(ckpt):
    summary = validate_hear_module(hear, str(ckpt))
    assert summary["sample_rate"] == 16000
    assert summary["scene_embedding_size"] == summary["timestamp_embedding_size"] == 1536
    assert all(h == pytest.approx(40.0) for h in summary["hops_ms"].values())  # v2: 4 log-mel frames of 10 ms


def test_validator_rejects_a_broken_module(ckpt):
    class Broken:
        load_model = staticmethod(hear.load_model)
        get_scene_embeddings = staticmethod(lambda audio, model: hear.get_scene_embeddings(audio, model).double())
        get_timestamp_embeddings = staticmethod(hear.get_timestamp_embeddings)

    with pytest.raises(HearValidationError, match="float32"):
        validate_hear_module(Broken, str(ckpt))


def test_hear_rejects_wrong_shape(ckpt):
    model = hear.load_model(str(ckpt), device="cpu")
    with pytest.raises(ValueError, match="n_sounds, n_samples"):
        hear.get_scene_embeddings(torch.zeros(16000), model)
