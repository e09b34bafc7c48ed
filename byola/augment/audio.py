"""BYOL-A's audio augmentations on batches of normalized log-mel spectrograms ``[B, F, T]`` or ``[B, 1, F, T]``.

Every module draws its random parameters per sample (from an optional ``torch.Generator``) and then transforms the
whole batch with a few tensor operations: there is no Python loop over the samples of a batch.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from byola.augment import _common
from byola.norm import PostNormalization

__all__ = ["MixupBank", "RandomResizeCrop", "RandomLinearFader", "AudioViews", "VERSIONS"]

VERSIONS = ("v1", "v2")  # BYOL-A's augmentation recipes (AudioViews.byola)


def _check_logmel(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
        raise ValueError(f"{name} expects a floating log-mel batch [B, F, T] or [B, C, F, T], "
                         f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} got an empty batch")


class MixupBank(nn.Module):
    """BYOL-A's Mixup: mix each sample with a random earlier sample kept in a FIFO memory bank.

    For every sample a ratio ``lam ~ U[0, ratio)`` and a bank entry ``z`` (uniform over the filled slots) are drawn;
    the output is ``log((1 - lam) * exp(x) + lam * exp(z))`` (log-mixup-exp, computed with ``logaddexp``) or
    ``(1 - lam) * x + lam * z`` when ``log_mixup_exp=False``.

    Earlier samples only: :meth:`mix` reads the bank as it was before the current batch, and :meth:`push` adds the
    batch afterwards, so a sample is never mixed with itself or with another sample of its own batch. (BYOL-A mixes
    sample by sample, so there a sample can meet an earlier sample of the same batch; here the batch is the unit.)
    While the bank is empty the output is the input itself.

    The bank is a ring buffer tensor ``[bank_size, *sample_shape]`` allocated on the data's device at the first push;
    ``bank``, ``count`` (filled slots) and ``ptr`` (next write slot) are buffers, so ``state_dict`` round-trips the
    whole memory and a resumed run continues identically (restore the generator's state as well). BYOL-A v1 uses
    ``ratio=0.4``, v2 ``ratio=0.2``.

    Several processes (``torch.distributed`` initialized, e.g. under torchrun): with ``global_bank=False`` each process
    keeps a bank of its own samples only; with ``global_bank=True`` :meth:`push` all-gathers the batches of every
    process (rank order; equal batch sizes) and every process pushes all of them, so all banks hold the same FIFO of
    the last ``bank_size`` samples of the global batch stream, as one process with the global batch would. Each
    process still draws its own partners and ratios from its own generator.
    """

    def __init__(self, ratio: float = 0.4, bank_size: int = 2048, log_mixup_exp: bool = True,
                 generator: torch.Generator | None = None, global_bank: bool = False) -> None:
        super().__init__()
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"mixup ratio must be in [0, 1], got {ratio}")
        if bank_size < 1:
            raise ValueError(f"bank_size must be >= 1, got {bank_size}")
        self.ratio = float(ratio)
        self.bank_size = int(bank_size)
        self.log_mixup_exp = bool(log_mixup_exp)
        self.generator = generator
        self.global_bank = bool(global_bank)
        self.register_buffer("bank", torch.empty(0))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        # Python mirrors of count/ptr: the hot path never reads a device scalar back (no host-device sync).
        self._count = 0
        self._ptr = 0

    def extra_repr(self) -> str:
        return (f"ratio={self.ratio}, bank_size={self.bank_size}, log_mixup_exp={self.log_mixup_exp}, "
                f"global_bank={self.global_bank}, filled={self._count}")

    @property
    def filled(self) -> int:
        """Number of samples in the bank."""
        return self._count

    def _check_compatible(self, x: torch.Tensor) -> None:
        if not self._count:
            return
        if tuple(self.bank.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(f"MixupBank holds samples of shape {tuple(self.bank.shape[1:])}, "
                             f"got a batch of {tuple(x.shape[1:])} samples")
        if self.bank.device != x.device:
            raise ValueError(f"MixupBank lives on {self.bank.device}, got a batch on {x.device}")

    def mix(self, x: torch.Tensor) -> torch.Tensor:
        """Mix every sample of ``x`` with a random bank entry (no push)."""
        _check_logmel(x, "MixupBank")
        if self._count == 0:
            return x
        self._check_compatible(x)
        b = x.shape[0]
        idx = _common.randint((b,), self._count, self.generator, x.device)
        lam = _common.uniform((b,), 0.0, self.ratio, self.generator, x.device)
        lam = lam.to(x.dtype).view(b, *([1] * (x.dim() - 1)))
        z = self.bank.index_select(0, idx).to(x.dtype)
        if self.log_mixup_exp:
            return torch.logaddexp(torch.log1p(-lam) + x, torch.log(lam) + z)
        return (1.0 - lam) * x + lam * z

    @torch.no_grad()
    def push(self, x: torch.Tensor) -> None:
        """Append the samples of ``x`` (with ``global_bank``: of every process's ``x``) to the bank (oldest entries
        are overwritten once it is full)."""
        _check_logmel(x, "MixupBank")
        if self.global_bank and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, x.detach().contiguous())
            x = torch.cat(parts)
        shape = (self.bank_size, *x.shape[1:])
        if self._count == 0 and (tuple(self.bank.shape) != shape or self.bank.device != x.device):
            self.bank = torch.zeros(shape, dtype=x.dtype, device=x.device)
        self._check_compatible(x)
        n = min(x.shape[0], self.bank_size)
        slots = (self._ptr + torch.arange(n, device=x.device)) % self.bank_size
        self.bank.index_copy_(0, slots, x[-n:].detach().to(self.bank.dtype))
        self._ptr = (self._ptr + n) % self.bank_size
        self._count = min(self._count + n, self.bank_size)
        self.count.fill_(self._count)
        self.ptr.fill_(self._ptr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mix ``x`` with earlier samples, then push ``x`` into the bank."""
        out = self.mix(x)
        self.push(x)
        return out

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        bank = state_dict.get(prefix + "bank")
        if bank is not None:
            if bank.numel() and bank.shape[0] != self.bank_size:
                raise ValueError(f"state_dict bank holds {bank.shape[0]} slots, this MixupBank has {self.bank_size}")
            # The bank is allocated lazily: take the stored shape before the usual copy.
            self.bank = torch.empty_like(bank, device=self.bank.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._count = int(self.count)
        self._ptr = int(self.ptr)


# PyTorch's (and OpenCV's) bicubic convolution constant, so results match F.interpolate(mode="bicubic").
_CUBIC_A = -0.75


def _cubic_weights(t: torch.Tensor) -> torch.Tensor:
    """Weights of the taps at offsets -1, 0, 1, 2 for fractional positions ``t`` in [0, 1) -> [..., 4]."""
    a = _CUBIC_A

    def near(d: torch.Tensor) -> torch.Tensor:  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d: torch.Tensor) -> torch.Tensor:  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    t2 = 1.0 - t
    return torch.stack([far(t + 1.0), near(t), near(t2), far(t2 + 1.0)], dim=-1)


def _bicubic_crop_matrix(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int, offset: int,
                         align_corners: bool) -> torch.Tensor:
    """Per-sample matrices ``[B, out_size, in_size]`` that crop ``[start, start + length)`` of a zero-padded canvas
    (input index 0 sits at canvas index ``offset``) and resize it to ``out_size`` with bicubic interpolation, with
    the same taps, weights and edge clamping (at the crop's edges) as ``F.interpolate(crop, mode="bicubic")``."""
    b = start.shape[0]
    device = start.device
    dst = torch.arange(out_size, device=device, dtype=torch.float32)
    length_f = length.to(torch.float32)[:, None]
    if align_corners:
        scale = (length_f - 1) / (out_size - 1) if out_size > 1 else torch.zeros_like(length_f)
        src = dst * scale
    else:
        src = (dst + 0.5) * (length_f / out_size) - 0.5
    base = src.floor()
    weights = _cubic_weights(src - base)                                   # [B, out, 4]
    taps = base.long()[..., None] + torch.arange(-1, 3, device=device)     # crop-local tap indices
    taps = torch.minimum(taps.clamp(min=0), (length - 1).view(b, 1, 1))    # clamp to the crop's edges
    idx = start.view(b, 1, 1) + taps - offset                              # input indices (outside = zero padding)
    inside = (idx >= 0) & (idx < in_size)
    weights = weights * inside
    matrix = torch.zeros(b, out_size, in_size, device=device, dtype=torch.float32)
    return matrix.scatter_add_(2, idx.clamp(0, in_size - 1), weights)


class RandomResizeCrop(nn.Module):
    """BYOL-A's Random Resize Crop on log-mel batches.

    The input ``[F, T]`` is centred in a zero-padded virtual canvas of ``(int(F * vf), int(T * vt))`` with
    ``(vf, vt) = virtual_crop_scale`` (offsets ``(canvas - size) // 2``). Per sample, scales ``fs ~ U[freq_scale)``
    and ``ts ~ U[time_scale)`` give a crop of ``h = clamp(int(fs * F), 1, canvas_F)`` bins by
    ``w = clamp(int(ts * T), 1, canvas_T)`` frames, whose top-left corner is uniform over the integer positions
    that keep it inside the canvas (``{0, ..., canvas - crop}`` on each axis, independently). The crop is resized
    back to ``[F, T]`` with bicubic interpolation (``align_corners``, default True).

    Implementation: crop + bicubic resize is separable, so each axis becomes a per-sample resampling matrix and the
    batch is transformed with two batched matmuls. This is used instead of ``grid_sample(mode="bicubic")`` because
    grid_sample reads the canvas pixels just outside the crop where ``F.interpolate`` on the cropped tensor clamps to
    the crop's edge; the matrices reproduce crop-then-interpolate exactly (tests compare with slicing +
    ``F.interpolate``) and are cheap at log-mel sizes.
    """

    def __init__(self, virtual_crop_scale: tuple[float, float] = (1.0, 1.5),
                 freq_scale: tuple[float, float] = (0.6, 1.5), time_scale: tuple[float, float] = (0.6, 1.5),
                 align_corners: bool = True, generator: torch.Generator | None = None) -> None:
        super().__init__()
        for name, (lo, hi) in (("virtual_crop_scale", virtual_crop_scale), ("freq_scale", freq_scale),
                               ("time_scale", time_scale)):
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {(lo, hi)}")
        if min(virtual_crop_scale) < 1.0:
            raise ValueError(f"virtual_crop_scale must be >= 1 on both axes, got {virtual_crop_scale}")
        self.virtual_crop_scale = tuple(float(v) for v in virtual_crop_scale)
        self.freq_scale = tuple(float(v) for v in freq_scale)
        self.time_scale = tuple(float(v) for v in time_scale)
        self.align_corners = bool(align_corners)
        self.generator = generator

    def extra_repr(self) -> str:
        return (f"virtual_crop_scale={self.virtual_crop_scale}, freq_scale={self.freq_scale}, "
                f"time_scale={self.time_scale}, align_corners={self.align_corners}")

    def sample_params(self, batch: int, n_freq: int, n_time: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Draw per-sample crops in canvas coordinates: ``top``, ``left``, ``height``, ``width`` (int64 [B])."""
        canvas_f = int(n_freq * self.virtual_crop_scale[0])
        canvas_t = int(n_time * self.virtual_crop_scale[1])
        g = self.generator
        fs = _common.uniform((batch,), *self.freq_scale, g, device)
        ts = _common.uniform((batch,), *self.time_scale, g, device)
        height = (fs * n_freq).long().clamp(1, canvas_f)
        width = (ts * n_time).long().clamp(1, canvas_t)
        top = _common.randint((batch,), canvas_f - height + 1, g, device)
        left = _common.randint((batch,), canvas_t - width + 1, g, device)
        return {"top": top, "left": left, "height": height, "width": width}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Crop/resize ``x`` with given per-sample crops (see :meth:`sample_params`)."""
        _check_logmel(x, "RandomResizeCrop")
        n_freq, n_time = x.shape[-2:]
        pad_f = (int(n_freq * self.virtual_crop_scale[0]) - n_freq) // 2
        pad_t = (int(n_time * self.virtual_crop_scale[1]) - n_time) // 2
        rows = _bicubic_crop_matrix(params["top"], params["height"], n_freq, n_freq, pad_f, self.align_corners)
        cols = _bicubic_crop_matrix(params["left"], params["width"], n_time, n_time, pad_t, self.align_corners)
        if x.dim() == 4:
            rows, cols = rows[:, None], cols[:, None]
        with _common.no_autocast(x.device):
            return rows.to(x.dtype) @ x @ cols.transpose(-1, -2).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_logmel(x, "RandomResizeCrop")
        return self.apply(x, self.sample_params(x.shape[0], x.shape[-2], x.shape[-1], x.device))


class RandomLinearFader(nn.Module):
    """BYOL-A v2's Random Linear Fader: add a linear ramp over time to each log-mel.

    Per sample, a start gain and an end gain are drawn from ``U[-gain, gain)`` and the ramp
    ``start + (end - start) * t / (T - 1)`` is added to every frequency bin of frame ``t``. This is done in the log
    (log-mel) domain, which is the domain the augmentations see: adding ``g`` to a log-mel multiplies the linear
    mel power by ``exp(g)``, so the ramp is a fade-in/fade-out of loudness, applied without leaving the log domain.
    """

    def __init__(self, gain: float = 1.0, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if gain < 0:
            raise ValueError(f"gain must be >= 0, got {gain}")
        self.gain = float(gain)
        self.generator = generator

    def extra_repr(self) -> str:
        return f"gain={self.gain}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_logmel(x, "RandomLinearFader")
        b, n_time = x.shape[0], x.shape[-1]
        ends = _common.uniform((b, 2), -self.gain, self.gain, self.generator, x.device).to(x.dtype)
        ramp = torch.linspace(0.0, 1.0, n_time, device=x.device, dtype=x.dtype)
        fade = ends[:, :1] + (ends[:, 1:] - ends[:, :1]) * ramp            # [B, T]
        return x + fade.view(b, *([1] * (x.dim() - 2)), n_time)


class AudioViews(nn.Module):
    """BYOL-A's view maker: ``n_views`` views of a log-mel batch, each Mixup -> RandomResizeCrop -> (Fader), then
    post-normalization (:class:`byola.norm.PostNormalization`) over the batch of all views together.

    All views go through every module as one batch ``[n_views * B, ...]`` (each sample of each view draws its own
    parameters). The views share one memory bank: every view is mixed with the bank as it was before this batch,
    then the un-augmented batch is pushed once. Any module may be ``None`` (skipped).

    After each call, ``last_stats`` holds detached 0-dim tensors ``pre_mean``, ``pre_std`` (all views before
    post-normalization) and ``post_mean``, ``post_std`` (after), for logging without a host-device sync here.
    """

    def __init__(self, mixup: MixupBank | None, crop: RandomResizeCrop | None, fader: RandomLinearFader | None = None,
                 n_views: int = 2, post_norm: bool = True) -> None:
        super().__init__()
        if n_views < 1:
            raise ValueError(f"n_views must be >= 1, got {n_views}")
        self.mixup = mixup
        self.crop = crop
        self.fader = fader
        self.n_views = int(n_views)
        self.post_norm = PostNormalization() if post_norm else None
        self.last_stats: dict[str, torch.Tensor] = {}

    @classmethod
    def byola(cls, version: str = "v2", *, n_views: int = 2, mixup_ratio: float | None = None,
              bank_size: int = 2048, log_mixup_exp: bool = True, mixup_global: bool = False,
              virtual_crop_scale: tuple[float, float] = (1.0, 1.5), freq_scale: tuple[float, float] = (0.6, 1.5),
              time_scale: tuple[float, float] = (0.6, 1.5), fader_gain: float | None = None, post_norm: bool = True,
              generator: torch.Generator | None = None) -> "AudioViews":
        """BYOL-A's recipe: v1 = Mixup 0.4 + RRC; v2 = Mixup 0.2 + RRC + Random Linear Fader (gain 1.0).
        ``mixup_ratio`` / ``fader_gain`` override the version's values (``fader_gain=0`` disables the fader);
        ``mixup_global`` is :class:`MixupBank`'s ``global_bank``."""
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(map(repr, VERSIONS))}, got {version!r}")
        if mixup_ratio is None:
            mixup_ratio = 0.4 if version == "v1" else 0.2
        if fader_gain is None:
            fader_gain = 0.0 if version == "v1" else 1.0
        return cls(MixupBank(mixup_ratio, bank_size, log_mixup_exp, generator=generator, global_bank=mixup_global),
                   RandomResizeCrop(virtual_crop_scale, freq_scale, time_scale, generator=generator),
                   RandomLinearFader(fader_gain, generator=generator) if fader_gain > 0 else None,
                   n_views=n_views, post_norm=post_norm)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_logmel(x, "AudioViews")
        views = x.repeat(self.n_views, *([1] * (x.dim() - 1)))
        if self.mixup is not None:
            views = self.mixup.mix(views)
            self.mixup.push(x)
        if self.crop is not None:
            views = self.crop(views)
        if self.fader is not None:
            views = self.fader(views)
        pre_std, pre_mean = torch.std_mean(views.detach())
        post_std, post_mean = pre_std, pre_mean
        if self.post_norm is not None:
            views = self.post_norm(views)
            post_std, post_mean = torch.std_mean(views.detach())
        self.last_stats = {"pre_mean": pre_mean, "pre_std": pre_std, "post_mean": post_mean, "post_std": post_std}
        return list(views.chunk(self.n_views, dim=0))
