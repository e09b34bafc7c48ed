"""Batched BYOL image augmentations: each per-sample op against torchvision, pipeline statistics, views."""
from __future__ import annotations

import itertools

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from tests.conftest import TorchOpCounter
from byola.augment.image import (BYOLImageAugment, BYOLImageViews, adjust_hue, byol_view_pair, color_jitter,
                                 default_blur_kernel, gaussian_blur, resized_crop, solarize)
from byola.augment.image import _sample_crops


def images(b: int, h: int = 12, w: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Only the step under test: full-image crop at the input size, no jitter/gray/blur/solarize, identity normalization.
NEUTRAL = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0,
               solarize_p=0.0, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def only(size: int = 12, **kw: object) -> BYOLImageAugment:
    return BYOLImageAugment(size, **{**NEUTRAL, **kw}, generator=gen())


# ---------------------------------------------------------------- per-sample ops against torchvision

def test_hue_matches_torchvision_sample_by_sample() -> None:
    x = images(8)
    x[0] = 0.3                                                                # a gray image (hue undefined)
    factor = torch.rand(8, generator=gen(1)) - 0.5
    out = adjust_hue(x, factor)
    for b in range(8):
        torch.testing.assert_close(out[b], TF.adjust_hue(x[b], float(factor[b])), atol=2e-6, rtol=0)


def test_color_jitter_applies_the_ops_in_each_samples_order() -> None:
    x = images(24)
    perms = torch.tensor(list(itertools.permutations(range(4))))             # all 24 orders, one per sample
    fb, fc, fs = (0.6 + 0.8 * torch.rand(24, generator=gen(i)) for i in range(3))
    fh = 0.2 * torch.rand(24, generator=gen(3)) - 0.1
    out = color_jitter(x, fb, fc, fs, fh, perms)
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for b in range(24):
        ref = x[b]
        for op_index in perms[b].tolist():
            ref = ops[op_index](ref, float((fb, fc, fs, fh)[op_index][b]))
        torch.testing.assert_close(out[b], ref, atol=5e-6, rtol=0)


def test_gaussian_blur_matches_torchvision() -> None:
    x = images(5, 10, 14)
    sigma = 0.1 + 1.9 * torch.rand(5, generator=gen(2))
    out = gaussian_blur(x, 5, sigma)
    for b in range(5):
        torch.testing.assert_close(out[b], TF.gaussian_blur(x[b], [5, 5], [float(sigma[b])] * 2), atol=2e-6, rtol=0)
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(x, 4, sigma)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(8, 8), (20, 16)])                         # down- and up-sampling
def test_resized_crop_matches_torchvision(size: tuple[int, int], interpolation: str) -> None:
    x = images(16, 14, 18)
    top, left, h, w = _sample_crops(16, 14, 18, (0.08, 1.0), (3 / 4, 4 / 3), gen(4), x.device)
    out = resized_crop(x, top, left, h, w, size, interpolation)
    mode = {"bilinear": TF.InterpolationMode.BILINEAR, "bicubic": TF.InterpolationMode.BICUBIC}[interpolation]
    for b in range(16):
        ref = TF.resized_crop(x[b], int(top[b]), int(left[b]), int(h[b]), int(w[b]), list(size), mode,
                              antialias=True)
        torch.testing.assert_close(out[b], ref, atol=5e-6, rtol=0)
    with pytest.raises(ValueError, match="interpolation"):
        resized_crop(x, top, left, h, w, size, "nearest")


def test_solarize_inverts_pixels_above_threshold() -> None:
    x = images(4)
    out = solarize(x, 0.5)
    assert torch.equal(out[x >= 0.5], 1 - x[x >= 0.5]) and torch.equal(out[x < 0.5], x[x < 0.5])
    assert torch.equal(out, TF.solarize(x, 0.5))
    assert torch.equal(only(solarize_p=1.0)(x), out)


# ---------------------------------------------------------------- random parameters

def test_crop_params_follow_scale_and_ratio() -> None:
    top, left, h, w = _sample_crops(4000, 40, 60, (0.08, 1.0), (3 / 4, 4 / 3), gen(), torch.device("cpu"))
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 40).all() and (left + w <= 60).all()
    area = (h * w).float() / (40 * 60)
    ratio = w.float() / h.float()
    assert area.min() > 0.06 and area.max() <= 1.0 and area.mean() > 0.35    # mean of U[0.08, 1] ~ 0.54, clipped
    assert ratio.min() > 0.65 and ratio.max() < 1.5
    assert len(set(zip(top.tolist(), left.tolist()))) > 200                 # positions vary


def test_crop_falls_back_to_central_crop() -> None:
    # No candidate can fit (area > image): torchvision's fallback is the central crop with the ratio clamped.
    top, left, h, w = _sample_crops(3, 10, 30, (5.0, 6.0), (3 / 4, 4 / 3), gen(), torch.device("cpu"))
    assert h.tolist() == [10] * 3 and w.tolist() == [13] * 3                 # round(10 * 4/3)
    assert top.tolist() == [0] * 3 and left.tolist() == [(30 - 13) // 2] * 3


def test_neutral_pipeline_is_identity() -> None:
    x = images(4)
    torch.testing.assert_close(only()(x), x, atol=1e-6, rtol=0)


def test_flip_probability_over_a_large_batch() -> None:
    x = images(2000, 4, 4)
    out = only(4, flip_p=0.5)(x)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped ^ kept).all()
    assert abs(flipped.float().mean().item() - 0.5) < 0.04


def test_grayscale_gives_equal_channels_with_its_probability() -> None:
    x = images(2000, 4, 4)
    out = only(4, grayscale_p=0.2)(x)
    equal = (out[:, 0] == out[:, 1]).flatten(1).all(1) & (out[:, 1] == out[:, 2]).flatten(1).all(1)
    assert abs(equal.float().mean().item() - 0.2) < 0.04
    torch.testing.assert_close(out[equal], TF.rgb_to_grayscale(x[equal], num_output_channels=3))
    assert torch.equal(out[~equal], x[~equal])


@pytest.mark.parametrize("name, p", [("jitter_p", 0.8), ("blur_p", 0.1), ("solarize_p", 0.2)])
def test_step_probabilities(name: str, p: float) -> None:
    x = images(2000, 6, 6)
    changed = (only(6, **{name: p})(x) - x).abs().flatten(1).amax(1) > 1e-6
    assert abs(changed.float().mean().item() - p) < 0.04


def test_blur_always_applied_in_view_one() -> None:
    x = images(200, 16, 16)
    kw = {k: v for k, v in NEUTRAL.items() if k not in ("blur_p", "solarize_p")}
    views = BYOLImageViews(16, blur_sigma=(1.0, 2.0), **kw)                  # sigma 0.1 barely changes pixels
    assert (views.aug1.blur_p, views.aug1.solarize_p, views.aug2.blur_p, views.aug2.solarize_p) == (1, 0, 0.1, 0.2)
    v1, v2 = views(x)
    changed1 = (v1 - x).abs().flatten(1).amax(1) > 1e-6
    changed2 = (v2 - x).abs().flatten(1).amax(1) > 1e-6
    assert changed1.all()                                                   # blur p 1.0
    assert 0.1 < changed2.float().mean() < 0.55                             # blur p 0.1 + solarize p 0.2
    assert views.aug1.blur_kernel_size == 3 and default_blur_kernel(224) == 23 and default_blur_kernel(96) == 9


# ---------------------------------------------------------------- pipeline and views

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_views_shapes_dtype_and_normalization(dtype: torch.dtype) -> None:
    x = images(6, 20, 30).to(dtype)
    v1, v2 = byol_view_pair(16, generator=gen())(x)
    assert v1.shape == v2.shape == (6, 3, 16, 16) and v1.dtype == v2.dtype == dtype
    assert not torch.allclose(v1, v2)
    three = BYOLImageViews((16, 8), n_views=3, generator=gen())(x)
    assert len(three) == 3 and all(v.shape == (6, 3, 16, 8) for v in three)
    assert not torch.allclose(three[1], three[2])
    # Normalized with ImageNet statistics: un-normalized values lie in [0, 1].
    raw = v1 * torch.tensor([0.229, 0.224, 0.225], dtype=dtype).view(1, 3, 1, 1) + \
        torch.tensor([0.485, 0.456, 0.406], dtype=dtype).view(1, 3, 1, 1)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5


def test_views_are_reproducible_with_a_seeded_generator() -> None:
    x = images(8)
    a = BYOLImageViews(10, n_views=3, generator=gen(7))(x)
    b = BYOLImageViews(10, n_views=3, generator=gen(7))(x)
    c = BYOLImageViews(10, n_views=3, generator=gen(8))(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not any(torch.equal(u, v) for u, v in zip(a, c))


def test_bad_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="float RGB"):
        byol_view_pair(8)(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="float RGB"):
        byol_view_pair(8)(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="n_views"):
        BYOLImageViews(8, n_views=4)
    with pytest.raises(ValueError, match="probability"):
        BYOLImageAugment(8, blur_p=1.5)


def test_cpu_generator_drives_other_devices() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    x = images(8)
    cpu = BYOLImageViews(10, generator=gen(7))(x)
    cuda = BYOLImageViews(10, generator=gen(7))(x.cuda())
    assert all(torch.allclose(u, v.cpu(), atol=1e-4) for u, v in zip(cpu, cuda))


def test_no_python_loop_over_samples() -> None:
    """The number of torch operations per call does not depend on the batch size."""
    counts = []
    for b in (2, 11):
        with TorchOpCounter() as counter:
            BYOLImageViews(8, n_views=3, generator=gen())(images(b))
        counts.append(counter.calls)
    assert counts[0] == counts[1]


def test_autocast_does_not_lower_precision() -> None:
    x = images(4, 16, 16)
    expected = byol_view_pair(16, generator=gen())(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = byol_view_pair(16, generator=gen())(x)
    assert all(g.dtype == torch.float32 and torch.equal(g, e) for g, e in zip(got, expected))
