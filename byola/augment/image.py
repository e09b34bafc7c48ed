"""BYOL's asymmetric image augmentations, on batches ``[B, 3, H, W]`` (float in [0, 1]) on any device.

Pipeline (Grill et al. 2020, appendix B), each step with parameters drawn per sample:
random resized crop (scale 0.08-1, ratio 3/4-4/3, bicubic) -> horizontal flip (p 0.5) -> color jitter
(brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1; p 0.8; the four adjustments in a random order per sample,
as torchvision's ColorJitter) -> grayscale (p 0.2) -> Gaussian blur (sigma in [0.1, 2.0]; p 1.0 in view 1, 0.1 in
view 2) -> solarization (p 0.0 in view 1, 0.2 in view 2) -> normalization.

torchvision's functional ops take one parameter value per call, so they would need a Python loop over the samples;
the per-sample versions below are batched re-implementations with the same formulas (tests compare each one with
torchvision's op, sample by sample). torchvision is used directly where no per-sample parameter is involved
(grayscale conversion, normalization).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from byola.extras import optional_module

TF = optional_module("torchvision.transforms.v2.functional", "image")  # the `image` extra

from byola.augment import _common

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "resized_crop", "adjust_hue", "color_jitter", "gaussian_blur", "solarize",
           "default_blur_kernel", "BYOLImageAugment", "BYOLImageViews", "byol_view_pair"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _check_images(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3 or not x.is_floating_point():
        raise ValueError(f"expected a float RGB batch [B, 3, H, W] with values in [0, 1], "
                         f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))} {getattr(x, 'dtype', '')}")
    if x.shape[0] == 0:
        raise ValueError("got an empty batch")


def _per_sample(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-sample parameter [B] shaped to broadcast against [B, C, H, W]."""
    return v.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


# ---------------------------------------------------------------- geometry

def _triangle(d: torch.Tensor) -> torch.Tensor:
    return (1 - d).clamp(min=0)


def _keys_cubic(d: torch.Tensor, a: float = -0.5) -> torch.Tensor:
    """Keys' cubic with a = -0.5, the antialiased bicubic filter of PIL and ``F.interpolate(antialias=True)``."""
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return torch.where(d < 1, near, torch.where(d < 2, far, torch.zeros_like(d)))


_FILTERS = {"bilinear": _triangle, "bicubic": _keys_cubic}


def _crop_resize_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                        interpolation: str) -> torch.Tensor:
    """Per-sample matrices ``[B, out_size, in_size]``: crop ``[start, start + length)`` and resize it to ``out_size``
    with the antialiased filter of ``F.interpolate(mode=interpolation, antialias=True)``: the filter stretched by
    ``max(scale, 1)`` around each output pixel centre, weights normalized over the crop."""
    kernel = _FILTERS[interpolation]
    device = start.device
    scale = (length.to(torch.float32) / out_size)[:, None, None]                      # [B, 1, 1]
    centre = scale * (torch.arange(out_size, device=device, dtype=torch.float32)[None, :, None] + 0.5)
    local = torch.arange(in_size, device=device)[None, None, :] - start.view(-1, 1, 1)  # crop-local index
    inside = (local >= 0) & (local < length.view(-1, 1, 1))
    weights = kernel(((local + 0.5 - centre) / scale.clamp(min=1.0)).abs()) * inside
    return weights / weights.sum(dim=2, keepdim=True)


def resized_crop(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor,
                 size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Per-sample ``TF.resized_crop(x[b], top[b], left[b], height[b], width[b], size, interpolation, antialias=True)``
    for the whole batch: crop + resize is separable, so it is two batched matmuls with per-sample resampling
    matrices. ``interpolation`` is "bilinear" or "bicubic" (which can overshoot the input range; not clamped here).
    Crops must lie inside the image."""
    if interpolation not in _FILTERS:
        raise ValueError(f"interpolation must be one of {sorted(_FILTERS)}, got {interpolation!r}")
    rows = _crop_resize_matrix(top, height, x.shape[-2], size[0], interpolation).to(x.dtype)
    cols = _crop_resize_matrix(left, width, x.shape[-1], size[1], interpolation).to(x.dtype)
    with _common.no_autocast(x.device):
        return rows[:, None] @ x @ cols[:, None].transpose(-1, -2)


def _sample_crops(batch: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                  generator: torch.Generator | None, device: torch.device, attempts: int = 10
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's ``RandomResizedCrop.get_params`` for a batch: ``attempts`` candidates per sample, the first
    that fits is used, else the central crop with the ratio clamped to ``ratio``. Returns top, left, h, w (int64)."""
    area = height * width
    target = area * _common.uniform((batch, attempts), *scale, generator, device)
    aspect = torch.exp(_common.uniform((batch, attempts), math.log(ratio[0]), math.log(ratio[1]), generator, device))
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.long().argmax(dim=1, keepdim=True)                 # index of the first fitting candidate
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    found = fits.any(dim=1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    top = torch.where(found, _common.randint((batch,), height - h + 1, generator, device),
                      torch.full_like(h, (height - fh) // 2))
    left = torch.where(found, _common.randint((batch,), width - w + 1, generator, device),
                       torch.full_like(w, (width - fw) // 2))
    return top, left, h, w


# ---------------------------------------------------------------- color

def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's colour blend: ``ratio * a + (1 - ratio) * b``, clamped to [0, 1]."""
    return (ratio * a + (1.0 - ratio) * b).clamp(0.0, 1.0)


def adjust_hue(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Per-sample ``TF.adjust_hue`` (rotate the hue in HSV space by ``factor`` turns, ``factor`` [B] in
    [-0.5, 0.5])."""
    maxc, minc = x.amax(dim=-3), x.amin(dim=-3)
    span = maxc - minc
    gray = span == 0
    sat = span / torch.where(gray, torch.ones_like(maxc), maxc)
    rc, gc, bc = ((maxc.unsqueeze(-3) - x) / torch.where(gray, torch.ones_like(span), span).unsqueeze(-3)).unbind(-3)
    r, g, _ = x.unbind(-3)
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~is_r & ~is_g
    hue = (bc - gc) * is_r + (2.0 + rc - bc) * is_g + (4.0 + gc - rc) * is_b
    hue = (hue / 6.0 + 1.0).fmod(1.0)
    hue = (hue + _per_sample(factor, x)[:, 0]).remainder(1.0)
    # HSV -> RGB, branch-free: channel n (R=5, G=3, B=1) is v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6.
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = (n + 6.0 * hue.unsqueeze(-3)).remainder(6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return maxc.unsqueeze(-3) * (1.0 - sat.unsqueeze(-3) * ramp)


def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor, saturation: torch.Tensor,
                 hue: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Per-sample brightness, contrast, saturation and hue adjustments (factors [B]) applied in the per-sample
    order ``order`` [B, 4] (a permutation of 0..3 = brightness, contrast, saturation, hue), like torchvision's
    ColorJitter.

    Batched: the three blends (``TF.adjust_brightness``, ``adjust_contrast``, ``adjust_saturation``) are one op with
    a per-sample blend target (0, mean gray level, or grayscale image) and factor: about half the time of the three
    per-sample blends in turn. The blends before each sample's hue step run in 3 masked steps (identity factor 1
    where inactive, an exact no-op), then the hue rotation runs once on the whole batch, then the blends after it in
    3 more steps.
    """
    factors = torch.stack([brightness, contrast, saturation, torch.ones_like(brightness)], dim=1)  # [B, 4]
    hue_step = (order == 3).long().argmax(dim=1)

    def blend_step(x: torch.Tensor, step: int, active: torch.Tensor) -> torch.Tensor:
        op = order[:, step]
        factor = torch.where(active, factors.gather(1, op[:, None])[:, 0], torch.ones_like(brightness))
        gray = TF.rgb_to_grayscale(x)
        target = torch.where((op == 1).view(-1, 1, 1, 1), gray.mean(dim=(-3, -2, -1), keepdim=True), gray)
        target = torch.where((op == 0).view(-1, 1, 1, 1), torch.zeros_like(gray), target)
        return _blend(x, target, _per_sample(factor, x))

    for step in range(3):                                                 # loops over op positions, not samples
        x = blend_step(x, step, step < hue_step)
    x = adjust_hue(x, hue)
    for step in range(1, 4):
        x = blend_step(x, step, step > hue_step)
    return x


def solarize(x: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """``TF.solarize``: pixels at or above ``threshold`` are inverted (``1 - x``)."""
    return torch.where(x >= threshold, 1.0 - x, x)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: torch.Tensor) -> torch.Tensor:
    """Per-sample ``TF.gaussian_blur(x[b], [k, k], [sigma[b], sigma[b]])`` (reflect padding): a separable
    depthwise convolution with one kernel per sample and channel, grouped so the batch is one conv call per axis."""
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be odd and positive, got {kernel_size}")
    b, c, h, w = x.shape
    half = kernel_size // 2
    pos = torch.arange(-half, half + 1, device=x.device, dtype=x.dtype)
    kernel = torch.softmax(-0.5 * (pos / sigma.to(device=x.device, dtype=x.dtype)[:, None]) ** 2, dim=1)  # [B, k]
    kernel = kernel.repeat_interleave(c, dim=0)                                                   # [B*C, k]
    y = F.pad(x.reshape(1, b * c, h, w), (half, half, half, half), mode="reflect")
    with _common.no_autocast(x.device):
        y = F.conv2d(y, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
        y = F.conv2d(y, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    return y.view(b, c, h, w)


# ---------------------------------------------------------------- pipeline

def default_blur_kernel(size: int) -> int:
    """BYOL's blur kernel: about 10% of the image side, made odd, at least 3 (23 for 224, 9 for 96, 3 for 32)."""
    k = max(int(0.1 * size), 3)
    return k if k % 2 else k + 1


class BYOLImageAugment(nn.Module):
    """One of BYOL's two image augmentations (see the module docstring), run on a whole batch.

    ``size`` is the output side (int) or (height, width). Color jitter follows torchvision's semantics
    (multiplicative brightness; BYOL's TensorFlow code adds a brightness delta instead): factors are drawn from
    ``[max(0, 1 - v), 1 + v]`` for brightness, contrast and saturation, and from ``[-hue, hue]`` for hue, applied
    with probability ``jitter_p`` in a per-sample random order (``jitter_random_order=False``: brightness, contrast,
    saturation, hue). ``blur_kernel_size`` defaults to :func:`default_blur_kernel` of the output height.
    The crop is resized with antialiased ``interpolation``: "bicubic" by default, as in the BYOL paper ("bilinear" is
    torchvision's default), then clamped to [0, 1] (bicubic overshoots) so the color ops see valid pixel values.
    """

    def __init__(self, size: int | tuple[int, int], *, crop_scale: tuple[float, float] = (0.08, 1.0),
                 crop_ratio: tuple[float, float] = (3 / 4, 4 / 3), interpolation: str = "bicubic",
                 flip_p: float = 0.5, jitter_p: float = 0.8,
                 brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.2, hue: float = 0.1,
                 jitter_random_order: bool = True, grayscale_p: float = 0.2, blur_p: float = 1.0,
                 blur_sigma: tuple[float, float] = (0.1, 2.0), blur_kernel_size: int | None = None,
                 solarize_p: float = 0.0, solarize_threshold: float = 0.5,
                 mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        for name, p in (("flip_p", flip_p), ("jitter_p", jitter_p), ("grayscale_p", grayscale_p),
                        ("blur_p", blur_p), ("solarize_p", solarize_p)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be a probability, got {p}")
        if not 0 < crop_scale[0] <= crop_scale[1] or not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(f"bad crop_scale {crop_scale} or crop_ratio {crop_ratio}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        if interpolation not in _FILTERS:
            raise ValueError(f"interpolation must be one of {sorted(_FILTERS)}, got {interpolation!r}")
        self.crop_scale, self.crop_ratio, self.interpolation = tuple(crop_scale), tuple(crop_ratio), interpolation
        self.flip_p, self.jitter_p, self.grayscale_p = flip_p, jitter_p, grayscale_p
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.jitter_random_order = jitter_random_order
        self.blur_p, self.blur_sigma = blur_p, tuple(blur_sigma)
        self.blur_kernel_size = blur_kernel_size or default_blur_kernel(self.size[0])
        self.solarize_p, self.solarize_threshold = solarize_p, solarize_threshold
        self.mean, self.std = list(mean), list(std)
        self.generator = generator

    def extra_repr(self) -> str:
        return (f"size={self.size}, interpolation={self.interpolation}, blur_p={self.blur_p}, "
                f"blur_kernel_size={self.blur_kernel_size}, solarize_p={self.solarize_p}, "
                f"jitter_random_order={self.jitter_random_order}")

    def _color_jitter(self, x: torch.Tensor) -> torch.Tensor:
        b, dev, g = x.shape[0], x.device, self.generator
        apply = _common.bernoulli((b,), self.jitter_p, g, dev)
        factors = [_common.uniform((b,), max(0.0, 1 - v), 1 + v, g, dev)
                   for v in (self.brightness, self.contrast, self.saturation)]
        hue = _common.uniform((b,), -self.hue, self.hue, g, dev)
        if self.jitter_random_order:
            order = _common.permutations(b, 4, g, dev)
        else:
            order = torch.arange(4, device=dev).expand(b, 4)
        return torch.where(apply.view(b, 1, 1, 1), color_jitter(x, *factors, hue, order), x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_images(x)
        b, dev, g = x.shape[0], x.device, self.generator
        top, left, h, w = _sample_crops(b, x.shape[-2], x.shape[-1], self.crop_scale, self.crop_ratio, g, dev)
        x = resized_crop(x, top, left, h, w, self.size, self.interpolation).clamp(0.0, 1.0)
        flip = _common.bernoulli((b,), self.flip_p, g, dev).view(b, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        x = self._color_jitter(x)
        gray = _common.bernoulli((b,), self.grayscale_p, g, dev).view(b, 1, 1, 1)
        x = torch.where(gray, TF.rgb_to_grayscale(x, num_output_channels=3), x)
        if self.blur_p > 0:
            blur = _common.bernoulli((b,), self.blur_p, g, dev).view(b, 1, 1, 1)
            sigma = _common.uniform((b,), *self.blur_sigma, g, dev)
            x = torch.where(blur, gaussian_blur(x, self.blur_kernel_size, sigma), x)
        if self.solarize_p > 0:
            sol = _common.bernoulli((b,), self.solarize_p, g, dev).view(b, 1, 1, 1)
            x = torch.where(sol, solarize(x, self.solarize_threshold), x)
        return TF.normalize(x, self.mean, self.std)


class BYOLImageViews(nn.Module):
    """BYOL's asymmetric views: augmentation 1 (blur p ``blur_p[0]`` = 1.0, solarize p ``solarize_p[0]`` = 0.0)
    and augmentation 2 (blur p 0.1, solarize p 0.2); ``view_augmentations`` says which one makes each view
    (an engine ``MethodSpec``'s field: BYOL ``(0, 1)``, TriBYOL ``(0, 1, 1)``: view 3 is a second independent draw
    of augmentation 2, BYOL-A style ``(0, 0)``). ``n_views`` 2 or 3 is the shorthand for ``(0, 1)`` /
    ``(0, 1, 1)`` when ``view_augmentations`` is not given. The views of one augmentation run as one batch. Other
    keyword arguments (``aug_kwargs``) go to both :class:`BYOLImageAugment` instances."""

    def __init__(self, size: int | tuple[int, int], n_views: int = 2, *, blur_p: tuple[float, float] = (1.0, 0.1),
                 solarize_p: tuple[float, float] = (0.0, 0.2), view_augmentations: tuple[int, ...] | None = None,
                 generator: torch.Generator | None = None, **aug_kwargs: object) -> None:
        super().__init__()
        if view_augmentations is None:
            if n_views not in (2, 3):
                raise ValueError(f"n_views must be 2 (BYOL) or 3 (TriBYOL), got {n_views}")
            view_augmentations = (0, 1) if n_views == 2 else (0, 1, 1)
        view_augmentations = tuple(int(a) for a in view_augmentations)
        if not view_augmentations or not set(view_augmentations) <= {0, 1}:
            raise ValueError(f"view_augmentations must list augmentation indices 0 or 1, got {view_augmentations}")
        self.view_augmentations = view_augmentations
        self.n_views = len(view_augmentations)
        self.aug1 = BYOLImageAugment(size, blur_p=blur_p[0], solarize_p=solarize_p[0], generator=generator,
                                     **aug_kwargs)
        self.aug2 = BYOLImageAugment(size, blur_p=blur_p[1], solarize_p=solarize_p[1], generator=generator,
                                     **aug_kwargs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_images(x)
        views: list[torch.Tensor | None] = [None] * self.n_views
        for k, aug in enumerate((self.aug1, self.aug2)):
            slots = [i for i, a in enumerate(self.view_augmentations) if a == k]
            if slots:
                made = aug(x.repeat(len(slots), 1, 1, 1)).chunk(len(slots), dim=0)
                for i, v in zip(slots, made):
                    views[i] = v
        return views  # type: ignore[return-value]


def byol_view_pair(size: int | tuple[int, int], generator: torch.Generator | None = None,
                   **aug_kwargs: object) -> BYOLImageViews:
    """BYOL's two-view augmentation for images of side ``size``."""
    return BYOLImageViews(size, n_views=2, generator=generator, **aug_kwargs)
