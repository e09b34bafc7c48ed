"""Audio (BYOL-A): random crops of audio files -> log-mel -> pre-normalization -> views -> post-normalization.

DataLoader workers decode and resample files and cut random ``unit_sec`` crops (:class:`byola.data.RandomCropDataset`);
on the device, :class:`AudioBatchViews` turns the batch of waveforms into log-mels
(:class:`byola.frontend.LogMelSpectrogram`), pre-normalizes them (``norm.mode``: corpus statistics computed before
training, v2; running statistics, v1; or fixed values), makes the views (:class:`byola.augment.AudioViews`: Mixup,
Random Resize Crop, Random Linear Fader) and post-normalizes the batch of all views. BYOL-A has one augmentation
pipeline: every view, whatever its ``view_augmentations`` index, comes from it.
"""
from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from byola.augment.audio import VERSIONS, AudioViews
from byola.data import CACHE_DTYPES, PAD_MODES, RandomCropDataset, scan_corpus
from byola.engine.distributed import dist_info
from byola.files import atomic_write_text
from byola.frontend import BACKENDS, LogMelSpectrogram
from byola.modalities.base import Modality, Pipeline, PipelineContext
from byola.norm import NormStats, PreNormalization, RunningNorm, compute_norm_stats

__all__ = ["AUDIO", "AudioData", "FrontendSection", "NormSection", "AudioAugment", "AudioBatchViews",
           "corpus_norm_stats"]

log = logging.getLogger(__name__)


def _defaults(fn: Any) -> dict[str, Any]:
    return {k: p.default for k, p in inspect.signature(fn).parameters.items()}


_DATASET, _LOGMEL, _VIEWS = _defaults(RandomCropDataset), _defaults(LogMelSpectrogram), _defaults(AudioViews.byola)


# ------------------------------------------------------------------------------------------------- recipe sections
@dataclass(frozen=True)
class AudioData:
    """``data``: the crops (:class:`byola.data.RandomCropDataset`) and the DataLoader workers."""

    sample_rate: int = field(default=_DATASET["sample_rate"], metadata={"min": 1})
    unit_sec: float = _DATASET["unit_sec"]
    pad: Literal[PAD_MODES] = _DATASET["pad"]
    probe: bool = _DATASET["probe"]
    cache_dir: str | None = _DATASET["cache_dir"]
    cache_dtype: Literal[CACHE_DTYPES] = _DATASET["cache_dtype"]
    num_workers: int = field(default=4, metadata={"min": 0})

    def __post_init__(self) -> None:
        if not self.unit_sec > 0:
            raise ValueError(f"unit_sec must be > 0, got {self.unit_sec}")


@dataclass(frozen=True)
class FrontendSection:
    """``frontend``: :class:`byola.frontend.LogMelSpectrogram` settings (its defaults); the sample rate is
    ``data.sample_rate``."""

    n_fft: int = field(default=_LOGMEL["n_fft"], metadata={"min": 1})
    win_length: int = field(default=_LOGMEL["win_length"], metadata={"min": 1})
    hop_length: int = field(default=_LOGMEL["hop_length"], metadata={"min": 1})
    n_mels: int = field(default=_LOGMEL["n_mels"], metadata={"min": 1})
    f_min: float = field(default=_LOGMEL["f_min"], metadata={"min": 0})
    f_max: float = _LOGMEL["f_max"]
    backend: Literal[BACKENDS] = _LOGMEL["backend"]


@dataclass(frozen=True)
class NormSection:
    """``norm``: pre-normalization. ``corpus``: exact statistics of ``max_samples`` random crops before training
    (v2); ``running``: running statistics over the first ``running_samples`` samples (v1; null = 2 x corpus size);
    ``fixed``: ``mean`` and ``std``."""

    mode: Literal["corpus", "running", "fixed"] = "corpus"
    max_samples: int = field(default=10000, metadata={"min": 1})
    running_samples: int | None = field(default=None, metadata={"min": 1})
    mean: float | None = None
    std: float | None = None

    def __post_init__(self) -> None:
        if self.mode == "fixed" and (self.mean is None or self.std is None or not self.std > 0):
            raise ValueError(f"mode 'fixed' needs mean and std > 0, got mean={self.mean}, std={self.std}")


@dataclass(frozen=True)
class AudioAugment:
    """``augment``: :meth:`byola.augment.AudioViews.byola` (its defaults; null ratios/gains: the version's)."""

    version: Literal[VERSIONS] = _VIEWS["version"]
    mixup_ratio: float | None = _VIEWS["mixup_ratio"]
    bank_size: int = field(default=_VIEWS["bank_size"], metadata={"min": 1})
    log_mixup_exp: bool = _VIEWS["log_mixup_exp"]
    mixup_global: bool = _VIEWS["mixup_global"]
    virtual_crop_scale: tuple[float, float] = _VIEWS["virtual_crop_scale"]
    freq_scale: tuple[float, float] = _VIEWS["freq_scale"]
    time_scale: tuple[float, float] = _VIEWS["time_scale"]
    fader_gain: float | None = _VIEWS["fader_gain"]


def _encoder_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    return {"n_mels": inputs["frontend"].n_mels}


def _check(inputs: dict[str, Any], model_params: dict[str, Any]) -> None:
    data, frontend = inputs["data"], inputs["frontend"]
    if "n_mels" in model_params and model_params["n_mels"] != frontend.n_mels:
        raise ValueError(f"model.n_mels {model_params['n_mels']} differs from frontend.n_mels {frontend.n_mels}")
    if frontend.f_max > data.sample_rate / 2:
        raise ValueError(f"frontend.f_max {frontend.f_max} is above the Nyquist frequency of data.sample_rate "
                         f"{data.sample_rate}")
    if frontend.win_length > frontend.n_fft:
        raise ValueError(f"frontend.win_length {frontend.win_length} exceeds frontend.n_fft {frontend.n_fft}")


# ----------------------------------------------------------------------------------------------------- device side
class AudioBatchViews(nn.Module):
    """``make_views`` for the trainer: waveforms ``[B, T]`` -> ``n_views`` views ``[B, 1, F, T']`` and batch
    statistics (mean/std of the log-mels after pre-normalization, and of all views before and after
    post-normalization, from ``AudioViews.last_stats``; left on the device, the trainer reads them once per step)."""

    def __init__(self, frontend: nn.Module, pre_norm: nn.Module, views: AudioViews,
                 channels_last: bool = False) -> None:
        super().__init__()
        self.frontend, self.pre_norm, self.views, self.channels_last = frontend, pre_norm, views, channels_last

    def forward(self, waves: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        lms = self.pre_norm(self.frontend(waves)).unsqueeze(1)       # [B, 1, F, T]
        views = self.views(lms)
        seen = self.views.last_stats
        stats = {"lms_mean": lms.mean(), "lms_std": lms.std(), "views_mean_before": seen["pre_mean"],
                 "views_std_before": seen["pre_std"]}
        if self.views.post_norm is not None:
            stats.update(views_mean_after=seen["post_mean"], views_std_after=seen["post_std"])
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        return views, stats


def corpus_norm_stats(dataset: RandomCropDataset, frontend: nn.Module, max_samples: int, seed: int,
                      num_workers: int = 0, progress: bool = True) -> NormStats:
    """Exact log-mel mean/std over the crops (epoch 0) of up to ``max_samples`` files drawn at random (seeded)
    from ``dataset`` (BYOL-A v2 used 10,000 random training samples)."""
    n = min(int(max_samples), len(dataset))
    picked = np.sort(np.random.default_rng([seed, 7]).permutation(len(dataset))[:n])
    loader = DataLoader(Subset(dataset, picked.tolist()), batch_size=None, num_workers=num_workers)
    return compute_norm_stats(iter(loader), frontend, sample_rate=dataset.sample_rate, progress=progress)


def _pre_norm(ctx: PipelineContext, frontend: nn.Module) -> tuple[nn.Module, NormStats | None]:
    """The pre-normalization module of ``norm.mode`` and its fixed statistics (None for running statistics)."""
    cfg: NormSection = ctx.inputs["norm"]
    if cfg.mode == "fixed":
        stats = NormStats(mean=cfg.mean, std=cfg.std, count=0)
        return PreNormalization.from_stats(stats), stats
    if cfg.mode == "running":
        return RunningNorm(cfg.running_samples or 2 * len(ctx.dataset)), None
    path = ctx.out_dir / "norm_stats.json"
    if ctx.resume and path.exists():
        stats = NormStats.from_dict(json.loads(path.read_text()))
    else:
        # Every process computes the same (deterministic) statistics: no rank waits on another, which could outlast
        # a collective's timeout on a large corpus, and no shared file system is assumed. Rank 0 keeps them.
        stats = corpus_norm_stats(ctx.dataset, frontend, cfg.max_samples, ctx.seed, ctx.inputs["data"].num_workers,
                                  ctx.progress)
        if dist_info().is_main:
            atomic_write_text(path, json.dumps(stats.to_dict()))
    log.info("pre-normalization statistics: mean %.6g, std %.6g over %d values", stats.mean, stats.std, stats.count)
    return PreNormalization.from_stats(stats), stats


# ------------------------------------------------------------------------------------------------------- wiring
def _dataset(inputs: dict[str, Any], sources: Sequence[str], seed: int) -> RandomCropDataset:
    d: AudioData = inputs["data"]
    dataset = RandomCropDataset(scan_corpus(sources), unit_sec=d.unit_sec, sample_rate=d.sample_rate, seed=seed,
                                pad=d.pad, probe=d.probe, cache_dir=d.cache_dir, cache_dtype=d.cache_dtype)
    log.info("corpus: %d files (%d unreadable skipped) from %s", len(dataset), len(dataset.unreadable), sources)
    return dataset


def _pipeline(ctx: PipelineContext) -> Pipeline:
    frontend = LogMelSpectrogram(sample_rate=ctx.inputs["data"].sample_rate, **vars(ctx.inputs["frontend"]))
    pre_norm, fixed_stats = _pre_norm(ctx, frontend)
    augment = dict(vars(ctx.inputs["augment"]))
    views = AudioViews.byola(augment.pop("version"), n_views=ctx.spec.n_views, generator=ctx.generator, **augment)
    dataset = ctx.dataset
    return Pipeline(AudioBatchViews(frontend, pre_norm, views, channels_last=ctx.channels_last), frontend.config(),
                    lambda: fixed_stats or pre_norm.stats(),
                    {"files": len(dataset), "unreadable": len(dataset.unreadable)}, ctx.inputs["data"].num_workers)


AUDIO = Modality("audio", {"data": AudioData, "frontend": FrontendSection, "norm": NormSection,
                           "augment": AudioAugment}, _encoder_inputs, _check, _dataset, _pipeline)
