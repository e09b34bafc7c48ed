"""byola.precision: native-bf16 detection, fp32 stays exact, bf16 within tolerance, the trainer's amp rule on CPU."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import byola
from byola import precision
from byola.engine.trainer import Trainer
from tests.conftest import load_trainer_toy

from tests.conftest import make_tone

toy = load_trainer_toy()

# bf16 keeps 8 mantissa bits; the shipped AudioNTT2020 (d=512) stays this close to fp32 (measured: see the test).
BF16_MIN_COSINE = 0.999


@pytest.fixture
def cpu_flags(monkeypatch):
    """Set the CPU flags byola.precision sees."""
    def set_flags(*flags: str) -> None:
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(precision, "_warned", set())
    return set_flags


def test_cpuinfo_flags_are_parsed(tmp_path: Path, monkeypatch) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx2 fma amx_bf16 amx_tile\n\n")
    monkeypatch.setattr(precision, "_CPUINFO", info)
    precision.cpu_flags.cache_clear()
    try:
        assert {"avx2", "amx_bf16"} <= precision.cpu_flags()
        assert precision.cpu_has_native_bf16()
        assert precision.cpu_model() == "Test CPU"
    finally:
        precision.cpu_flags.cache_clear()


@pytest.mark.parametrize("flags, native", [(("avx2", "fma"), False), (("avx512f", "avx512_bf16"), True),
                                           (("avx512f", "amx_bf16", "amx_tile"), True), ((), False)])
def test_detection_and_auto(cpu_flags, flags, native) -> None:
    cpu_flags(*flags)
    assert precision.native_bf16("cpu") is native
    assert precision.resolve_precision("auto", "cpu") == (torch.bfloat16 if native else torch.float32)
    assert precision.resolve_precision("fp32", "cpu") == torch.float32


def test_bf16_where_not_native_warns_once(cpu_flags) -> None:
    cpu_flags("avx2")
    with pytest.warns(RuntimeWarning, match="no avx512_bf16/amx_bf16.*slower than fp32") as caught:
        assert precision.resolve_precision("bf16", "cpu") == torch.bfloat16
        assert precision.resolve_precision("bf16", "cpu") == torch.bfloat16
    assert len(caught) == 1 and "\n" not in str(caught[0].message)
    cpu_flags("amx_bf16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_precision("bf16", "cpu") == torch.bfloat16


def test_bad_precision_is_one_line_error() -> None:
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, auto, got 'fp16'"):
        precision.resolve_precision("fp16", "cpu")


def _waves() -> torch.Tensor:
    return torch.stack([torch.from_numpy(make_tone(1.0, freq=f, seed=k))
                        for k, f in enumerate((110.0, 440.0, 1500.0, 5000.0))])


def test_fp32_is_the_plain_model_bit_for_bit() -> None:
    """fp32 runs no autocast and no cast: equal, bit for bit, to frontend -> prenorm -> encoder called directly."""
    model = byola.load(precision="fp32")
    assert model.compute_dtype == torch.float32
    waves = _waves()
    with torch.inference_mode():
        plain = torch.cat([model.encoder(model.prenorm(model.frontend(chunk)).unsqueeze(1))
                           for chunk in waves.split(model.encoder.micro_batch)])
    assert torch.equal(model.embed_batch(waves), plain)


def test_bf16_within_tolerance_of_fp32(cpu_flags) -> None:
    cpu_flags("amx_bf16")  # no emulation warning here: this test checks the numbers, not the hardware
    fp32, bf16 = byola.load(precision="fp32"), byola.load(precision="bf16")
    assert bf16.compute_dtype == torch.bfloat16
    waves = _waves()
    a, b = fp32.embed_batch(waves), bf16.embed_batch(waves)
    assert b.dtype == torch.float32 and not torch.equal(a, b)  # bf16 did run
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cos.min() >= BF16_MIN_COSINE, cos
    # Long inputs take the chunked path, which runs the encoder under the same autocast.
    long = torch.from_numpy(np.tile(make_tone(1.0, seed=9), 25))
    la, lb = fp32.embed(long, 16000), bf16.embed(long, 16000)
    assert torch.nn.functional.cosine_similarity(la, lb, dim=0) >= BF16_MIN_COSINE


def _trainer_amp(tmp_path: Path, amp: str) -> torch.dtype | None:
    return Trainer(toy.ToyBYOL(), lambda p: torch.optim.SGD(p, lr=0.1), toy.ToyData(), toy.ToyViews(), tmp_path,
                   batch_size=4, steps=1, progress=False, amp=amp, device="cpu").amp_dtype


def test_trainer_amp_on_cpu_follows_native_bf16(cpu_flags, tmp_path: Path) -> None:
    cpu_flags("avx2")
    assert _trainer_amp(tmp_path / "a", "auto") is None
    assert _trainer_amp(tmp_path / "b", "off") is None
    with pytest.warns(RuntimeWarning, match="slower than fp32"):
        assert _trainer_amp(tmp_path / "c", "bf16") == torch.bfloat16
    cpu_flags("avx512_bf16")
    assert _trainer_amp(tmp_path / "d", "auto") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16' needs CUDA"):
        _trainer_amp(tmp_path / "e", "fp16")
