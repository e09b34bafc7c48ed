"""Shared fixtures: generated audio (always available) and the real clips of ../shared/data (skipped when absent)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.overrides import TorchFunctionMode

SHARED_DATA = Path(os.environ.get("BYOLA_SHARED_DATA",
                                  Path(__file__).resolve().parents[1] / ".." / "shared" / "data")).resolve()


def load_trainer_toy() -> ModuleType:
    """tests/trainer_toy.py (the trainer's toy engine, also run as a script under torchrun) as a module."""
    spec = importlib.util.spec_from_file_location("trainer_toy", Path(__file__).with_name("trainer_toy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def shared_data(*parts: str) -> Path:
    """Path under ../shared/data; skips the calling test when it is not on this machine."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path}")
    return path


def make_tone(seconds: float = 1.0, sample_rate: int = 16000, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A sine tone plus a little noise, float32 mono."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.shape)
    return wave.astype(np.float32)


@pytest.fixture
def tone_wav(tmp_path: Path) -> Path:
    """A 1-second 16 kHz mono wav file."""
    path = tmp_path / "tone.wav"
    sf.write(path, make_tone(), 16000)
    return path


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A small byola checkpoint (AudioNTT2020 d=32, seeded, with normalization statistics) for embedding tests."""
    from byola.checkpoint import save_checkpoint
    from byola.frontend import LogMelSpectrogram
    from byola.models import build_encoder
    from byola.norm import NormStats

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    save_checkpoint(path, build_encoder("AudioNTT2020", n_mels=64, d=32), LogMelSpectrogram().config(),
                    NormStats(mean=-8.0, std=4.0, count=1), {"source": "test"})
    return path


@pytest.fixture
def one_thread():
    """Tiny tensors: intra-op threads only add contention on a shared machine (restored afterwards)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class TorchOpCounter(TorchFunctionMode):
    """Counts torch function calls inside `with`: a count that grows with the batch size betrays a per-sample loop."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.calls += 1
        return func(*args, **(kwargs or {}))
