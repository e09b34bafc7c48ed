"""Batched BYOL-A audio augmentations: shapes, reproducibility, Mixup math and memory bank, RRC geometry, fader."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TorchOpCounter
from byola.augment.audio import AudioViews, MixupBank, RandomLinearFader, RandomResizeCrop

F_BINS, T_FRAMES = 16, 24


def logmels(b: int, seed: int = 0, four_d: bool = False) -> torch.Tensor:
    x = torch.randn(b, F_BINS, T_FRAMES, generator=torch.Generator().manual_seed(seed))
    return x[:, None] if four_d else x


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- shapes, dtype, reproducibility

@pytest.mark.parametrize("four_d", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_modules_keep_shape_and_dtype(four_d: bool, dtype: torch.dtype) -> None:
    x = logmels(5, four_d=four_d).to(dtype)
    mixup = MixupBank(0.4, bank_size=8, generator=gen())
    mixup(x)
    for module in (mixup, RandomResizeCrop(generator=gen()), RandomLinearFader(generator=gen())):
        y = module(x)
        assert y.shape == x.shape and y.dtype == dtype and torch.isfinite(y).all()
    views = AudioViews.byola("v2", n_views=3, bank_size=8, generator=gen())(x)
    assert len(views) == 3 and all(v.shape == x.shape and v.dtype == dtype for v in views)


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="log-mel"):
        RandomResizeCrop()(torch.zeros(F_BINS, T_FRAMES))
    with pytest.raises(ValueError, match="log-mel"):
        MixupBank()(torch.zeros(2, F_BINS, T_FRAMES, dtype=torch.long))
    with pytest.raises(ValueError):
        MixupBank(ratio=1.5)
    with pytest.raises(ValueError):
        RandomResizeCrop(virtual_crop_scale=(0.5, 1.5))


def run_views(seed: int, steps: int = 3) -> list[torch.Tensor]:
    views = AudioViews.byola("v2", bank_size=8, generator=gen(seed))
    return [v for step in range(steps) for v in views(logmels(4, seed=step))]


def test_seeded_generator_is_reproducible() -> None:
    a, b, c = run_views(0), run_views(0), run_views(1)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_cpu_generator_drives_other_devices() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cpu = run_views(0)
    views = AudioViews.byola("v2", bank_size=8, generator=gen(0))
    cuda = [v.cpu() for step in range(3) for v in views(logmels(4, seed=step).cuda())]
    assert all(torch.allclose(u, v, atol=1e-4) for u, v in zip(cpu, cuda))


# ---------------------------------------------------------------- Mixup

def test_mixup_passes_input_through_while_bank_is_empty() -> None:
    x = logmels(3)
    mixup = MixupBank(generator=gen())
    assert torch.equal(mixup(x), x)
    assert mixup.filled == 3


@pytest.mark.parametrize("log_mixup_exp", [True, False])
def test_mixup_math_matches_hand_computation(log_mixup_exp: bool) -> None:
    z = logmels(1, seed=1)
    x = logmels(1, seed=2).double()
    mixup = MixupBank(ratio=0.4, bank_size=4, log_mixup_exp=log_mixup_exp, generator=gen())
    mixup.push(z.double())
    out = mixup.mix(x)[0].numpy()
    xn, zn = x[0].numpy(), z[0].double().numpy()
    # Recover the drawn ratio from one element, then the formula must explain every element with it.
    if log_mixup_exp:
        lam = (np.exp(out[0, 0]) - np.exp(xn[0, 0])) / (np.exp(zn[0, 0]) - np.exp(xn[0, 0]))
        expected = np.log((1 - lam) * np.exp(xn) + lam * np.exp(zn))
    else:
        lam = (out[0, 0] - xn[0, 0]) / (zn[0, 0] - xn[0, 0])
        expected = (1 - lam) * xn + lam * zn
    assert 0.0 <= lam < 0.4
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)


def test_mixup_ratio_is_uniform_below_alpha() -> None:
    mixup = MixupBank(ratio=0.2, bank_size=4, log_mixup_exp=False, generator=gen())
    mixup.push(torch.ones(1, 2, 2))
    lam = mixup.mix(torch.zeros(4000, 2, 2))[:, 0, 0]             # (1 - lam) * 0 + lam * 1
    assert lam.min() >= 0 and lam.max() < 0.2
    assert abs(lam.mean().item() - 0.1) < 0.005


def test_mixup_uses_earlier_batches_only() -> None:
    mixup = MixupBank(ratio=0.4, bank_size=16, log_mixup_exp=False, generator=gen())
    first = torch.zeros(4, 2, 3)
    second = torch.full((4, 2, 3), 10.0)
    assert torch.equal(mixup(first), first)
    out = mixup(second)
    # Mixed with the zeros of the first batch: (1 - lam) * 10 with lam > 0, never with itself (which would give 10).
    assert (out <= 10).all() and (out < 10).any()
    assert torch.allclose(out, out[:, :1, :1].expand_as(out))


def test_mixup_draws_every_filled_slot_and_no_empty_one() -> None:
    mixup = MixupBank(ratio=1.0, bank_size=8, log_mixup_exp=False, generator=gen())
    k = torch.arange(1, 6, dtype=torch.float32)
    mixup.push(torch.stack([k, torch.ones(5)], dim=1).view(5, 2, 1))  # 5 of 8 slots filled: z_k = [k, 1]
    out = mixup.mix(torch.zeros(3000, 2, 1))                           # = lam * z_k
    drawn = (out[:, 0, 0] / out[:, 1, 0]).round().long()
    assert set(drawn.tolist()) == {1, 2, 3, 4, 5}                      # never an empty (zero) slot


def test_memory_bank_is_a_fifo_ring_buffer() -> None:
    mixup = MixupBank(bank_size=5)
    batch = lambda *vals: torch.tensor(vals, dtype=torch.float32).view(-1, 1, 1)  # noqa: E731
    mixup.push(batch(1, 2, 3))
    assert mixup.filled == 3 and int(mixup.ptr) == 3 and int(mixup.count) == 3
    assert mixup.bank[:3].flatten().tolist() == [1, 2, 3]
    mixup.push(batch(4, 5, 6))                                         # wraps: 6 overwrites the oldest (1)
    assert mixup.filled == 5 and int(mixup.ptr) == 1
    assert mixup.bank.flatten().tolist() == [6, 2, 3, 4, 5]
    mixup.push(batch(*range(10, 17)))                                  # larger than the bank: keeps the last 5
    assert sorted(mixup.bank.flatten().tolist()) == [12, 13, 14, 15, 16]
    assert mixup.filled == 5
    with pytest.raises(ValueError, match="shape"):
        mixup.push(torch.zeros(2, 1, 2))


def test_state_dict_round_trip_continues_identically() -> None:
    g = gen(3)
    a = MixupBank(ratio=0.4, bank_size=6, generator=g)
    for step in range(3):
        a(logmels(4, seed=step))
    buffer = io.BytesIO()
    torch.save({"mixup": a.state_dict(), "rng": g.get_state()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer)
    assert set(saved["mixup"]) == {"bank", "count", "ptr"}

    g2 = torch.Generator()
    g2.set_state(saved["rng"])
    b = MixupBank(ratio=0.4, bank_size=6, generator=g2)
    b.load_state_dict(saved["mixup"])
    assert b.filled == a.filled == 6 and torch.equal(a.bank, b.bank)
    for step in range(3, 6):
        x = logmels(4, seed=step)
        assert torch.equal(a(x), b(x))
    assert torch.equal(a.bank, b.bank) and int(a.ptr) == int(b.ptr)

    with pytest.raises(ValueError, match="slots"):
        MixupBank(bank_size=7).load_state_dict(saved["mixup"])


# ---------------------------------------------------------------- Random Resize Crop

def reference_crop(x: torch.Tensor, top: int, left: int, height: int, width: int, vcs: tuple[float, float],
                   align_corners: bool = True) -> torch.Tensor:
    """One sample [F, T]: zero-padded canvas, slice, F.interpolate bicubic back to [F, T]."""
    nf, nt = x.shape
    cf, ct = int(nf * vcs[0]), int(nt * vcs[1])
    canvas = x.new_zeros(cf, ct)
    pf, pt = (cf - nf) // 2, (ct - nt) // 2
    canvas[pf:pf + nf, pt:pt + nt] = x
    crop = canvas[top:top + height, left:left + width]
    return F.interpolate(crop[None, None], size=(nf, nt), mode="bicubic", align_corners=align_corners)[0, 0]


def test_rrc_identity_when_scales_and_canvas_are_one() -> None:
    x = logmels(3)
    rrc = RandomResizeCrop((1.0, 1.0), (1.0, 1.0), (1.0, 1.0), generator=gen())
    assert torch.equal(rrc(x), x)
    assert torch.equal(rrc(x[:, None]), x[:, None])


@pytest.mark.parametrize("align_corners", [True, False])
def test_rrc_matches_slicing_and_interpolate(align_corners: bool) -> None:
    x = logmels(6)
    vcs = (1.0, 1.5)
    rrc = RandomResizeCrop(vcs, (0.6, 1.5), (0.6, 1.5), align_corners=align_corners, generator=gen())
    params = rrc.sample_params(6, F_BINS, T_FRAMES, x.device)
    out = rrc.apply(x, params)
    for b in range(6):
        crop = [int(params[k][b]) for k in ("top", "left", "height", "width")]
        ref = reference_crop(x[b], *crop, vcs, align_corners)
        torch.testing.assert_close(out[b], ref, atol=1e-5, rtol=1e-5)


def test_rrc_known_crop_and_forward_use_the_same_path() -> None:
    x = logmels(1)
    rrc = RandomResizeCrop((1.0, 1.5), generator=gen(5))
    params = rrc.sample_params(1, F_BINS, T_FRAMES, x.device)
    torch.testing.assert_close(RandomResizeCrop((1.0, 1.5), generator=gen(5))(x), rrc.apply(x, params))
    known = {"top": torch.tensor([2]), "left": torch.tensor([7]), "height": torch.tensor([10]),
             "width": torch.tensor([15])}
    torch.testing.assert_close(rrc.apply(x, known)[0], reference_crop(x[0], 2, 7, 10, 15, (1.0, 1.5)),
                               atol=1e-5, rtol=1e-5)


def test_rrc_crops_stay_inside_the_canvas() -> None:
    rrc = RandomResizeCrop((1.0, 1.5), (0.6, 1.5), (0.6, 1.5), generator=gen())
    p = rrc.sample_params(5000, F_BINS, T_FRAMES, torch.device("cpu"))
    cf, ct = F_BINS, int(T_FRAMES * 1.5)
    assert (p["height"] >= int(0.6 * F_BINS)).all() and (p["height"] <= cf).all()
    assert (p["width"] >= int(0.6 * T_FRAMES)).all() and (p["width"] <= ct).all()
    assert (p["top"] >= 0).all() and (p["top"] + p["height"] <= cf).all()
    assert (p["left"] >= 0).all() and (p["left"] + p["width"] <= ct).all()
    # Positions are uniform over the valid range: for the full-height crops the top is 0, for the narrowest crops
    # every left position from 0 to canvas - width is drawn.
    narrow = p["width"] == p["width"].min()
    assert set(p["left"][narrow].tolist()) == set(range(ct - int(p["width"].min()) + 1))


def test_rrc_padding_regions_are_zero() -> None:
    x = torch.ones(2, F_BINS, T_FRAMES)
    rrc = RandomResizeCrop((1.0, 2.0))                                  # canvas 48 frames, input at 12..35
    in_padding = {"top": torch.tensor([0, 0]), "left": torch.tensor([0, 6]), "height": torch.tensor([F_BINS] * 2),
                  "width": torch.tensor([10, 12])}                     # sample 0: frames 0..9, all padding
    out = rrc.apply(x, in_padding)
    assert torch.equal(out[0], torch.zeros(F_BINS, T_FRAMES))
    # Sample 1 spans frames 6..17: the first half is padding (zeros), the last frames are input (ones).
    assert (out[1, :, :8].abs() < 1e-6).all() and torch.allclose(out[1, :, -6:], torch.ones(F_BINS, 6))


# ---------------------------------------------------------------- Random Linear Fader

def test_linear_fader_adds_a_linear_ramp_over_time() -> None:
    x = logmels(500)
    out = RandomLinearFader(gain=1.0, generator=gen())(x)
    fade = out - x
    assert torch.allclose(fade, fade[:, :1, :].expand_as(fade), atol=1e-6)           # same for every bin
    ramp = fade[:, 0, :]
    assert torch.allclose(ramp.diff(n=2, dim=1), torch.zeros(500, T_FRAMES - 2), atol=1e-5)  # linear in time
    start, end = ramp[:, 0], ramp[:, -1]
    assert start.abs().max() <= 1.0 and end.abs().max() <= 1.0
    assert start.min() < -0.8 and start.max() > 0.8 and (start - end).abs().mean() > 0.3  # independent ends
    assert torch.equal(RandomLinearFader(gain=0.0)(x), x)


# ---------------------------------------------------------------- composition

def test_audio_views_post_normalizes_all_views_together_and_shares_the_bank() -> None:
    x = logmels(4) * 3 + 5
    views = AudioViews.byola("v1", bank_size=16, generator=gen())
    assert views.fader is None and views.mixup.ratio == 0.4
    assert AudioViews.byola("v2").fader is not None and AudioViews.byola("v2").mixup.ratio == 0.2
    v1, v2 = views(x)
    both = torch.cat([v1, v2])
    assert abs(both.mean().item()) < 1e-5 and abs(both.std().item() - 1) < 1e-5
    assert not torch.allclose(v1, v2)
    stats = {k: v.item() for k, v in views.last_stats.items()}
    assert abs(stats["pre_mean"] - 5) < 1.5 and stats["pre_std"] > 1.5
    assert abs(stats["post_mean"]) < 1e-5 and abs(stats["post_std"] - 1) < 1e-5
    assert views.mixup.filled == 4                                      # pushed once per call, not per view
    views(x)
    assert views.mixup.filled == 8


def count_ops(module: torch.nn.Module, batch: int) -> int:
    for size in (batch, batch):                                         # second call: bank filled
        x = logmels(size)
        with TorchOpCounter() as counter:
            module(x)
    return counter.calls


@pytest.mark.parametrize("make", [lambda: MixupBank(bank_size=64), RandomResizeCrop, RandomLinearFader,
                                  lambda: AudioViews.byola("v2", bank_size=64)])
def test_no_python_loop_over_samples(make) -> None:  # noqa: ANN001
    """The number of torch operations per call does not depend on the batch size."""
    assert count_ops(make(), 2) == count_ops(make(), 13)


def test_autocast_does_not_lower_precision() -> None:
    x = logmels(4)
    expected = AudioViews.byola("v2", bank_size=8, generator=gen())(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = AudioViews.byola("v2", bank_size=8, generator=gen())(x)
    assert all(g.dtype == torch.float32 and torch.equal(g, e) for g, e in zip(got, expected))


def test_audio_views_resume_from_state_dict_and_generator_state() -> None:
    g = gen(11)
    a = AudioViews.byola("v2", bank_size=8, generator=g)
    for step in range(3):
        a(logmels(4, seed=step))
    state, rng = a.state_dict(), g.get_state()
    assert set(state) == {"mixup.bank", "mixup.count", "mixup.ptr"}
    g2 = torch.Generator()
    g2.set_state(rng)
    b = AudioViews.byola("v2", bank_size=8, generator=g2)
    b.load_state_dict(state)
    for step in range(3, 5):
        x = logmels(4, seed=step)
        assert all(torch.equal(u, v) for u, v in zip(a(x), b(x)))


def test_pipeline_on_frontend_log_mels() -> None:
    """Waves -> LogMelSpectrogram -> PreNormalization -> AudioViews, at BYOL-A's unit size (0.95 s -> 96 frames)."""
    from byola.frontend import LogMelSpectrogram
    from byola.norm import PreNormalization

    t = torch.arange(15200) / 16000
    freqs = torch.tensor([220.0, 440.0, 880.0, 1760.0])[:, None]
    waves = 0.5 * torch.sin(2 * torch.pi * freqs * t) + 0.01 * torch.randn(4, 15200, generator=gen())
    lms = LogMelSpectrogram(backend="torchaudio")(waves)
    lms = PreNormalization(float(lms.mean()), float(lms.std()))(lms)
    assert lms.shape == (4, 64, 96)
    views = AudioViews.byola("v2", bank_size=16, generator=gen())
    for _ in range(2):
        v1, v2 = views(lms[:, None])
    assert v1.shape == v2.shape == (4, 1, 64, 96) and torch.isfinite(torch.cat([v1, v2])).all()
    assert views.mixup.filled == 8
