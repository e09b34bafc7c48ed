"""Pretraining of any BYOL-family method (:data:`byola.engine.methods.METHODS`) on audio (BYOL-A) or images: wires
data, front end, normalization, augmentation, encoder and the engine into the one training loop,
:class:`byola.engine.trainer.Trainer`, and exports self-describing checkpoints. The recipe's ``modality``
(``audio``, the default, or ``image``) selects the data side; everything else is shared.

Audio, one step: DataLoader workers decode and resample files and cut random ``unit_sec`` crops
(:class:`byola.data.RandomCropDataset`); on the device, :class:`AudioBatchViews` turns the batch of waveforms into
log-mels (:class:`byola.frontend.LogMelSpectrogram`), pre-normalizes them (corpus statistics computed before
training, v2; or running statistics, v1; or fixed values), makes the views (:class:`byola.augment.AudioViews`:
Mixup, Random Resize Crop, Random Linear Fader) and post-normalizes the batch of all views; the engine
(:func:`byola.engine.methods.build_method`) returns the loss.

Images, one step: ``uint8`` images from :mod:`byola.image_data` (a folder, CIFAR-10 or STL-10 on disk);
:class:`ImageBatchViews` makes BYOL's views on the device (:class:`byola.augment.image.BYOLImageViews`, one
augmentation per entry of the method's ``view_augmentations``); checkpoints carry ``{"modality": "image", size,
mean, std}`` in place of the log-mel configuration and no normalization statistics.

Recipes are YAML files (``recipes/<name>.yaml``; ``recipe`` is a name or a path) with the sections ``data``,
``frontend``, ``norm``, ``augment``, ``model``, ``method``, ``optim``, ``train`` and a top-level ``seed``. Every
value can be overridden (see :func:`resolve_config`).

Run folder (``out``): ``log.csv`` (per-step loss, tau, lr, timings, batch statistics before/after
post-normalization), ``config.yaml`` (the resolved recipe), ``norm_stats.json``, ``checkpoints/state-*.pt``
(training state for ``resume``), ``model-step<N>.safetensors`` (periodic exports) and ``model.safetensors`` (the
final model: ``byola embed --checkpoint OUT/model.safetensors``).
"""
from __future__ import annotations

import copy
import importlib.resources
import json
import logging
import math
import os
import platform
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

import byola
from byola.augment.audio import AudioViews
from byola.augment.image import BYOLImageViews
from byola.checkpoint import save_checkpoint
from byola.data import RandomCropDataset, scan_corpus
from byola.engine.methods import MethodSpec, build_method, get_method, method_spec_overrides
from byola.engine.optim import LARS
from byola.engine.trainer import Trainer, default_device, dist_info, init_distributed, latest_checkpoint
from byola.frontend import LogMelSpectrogram
from byola.image_data import build_image_dataset
from byola.models import build_encoder
from byola.norm import NormStats, PreNormalization, compute_norm_stats

__all__ = ["pretrain", "resolve_config", "load_recipe", "RECIPES_DIR", "RunningNorm", "AudioBatchViews",
           "ImageBatchViews", "corpus_norm_stats"]

log = logging.getLogger(__name__)

RECIPES_DIR = Path(str(importlib.resources.files("byola.recipes")))  # the repository's recipes/ folder
# Sections whose keys are passed through as keyword arguments: overrides may add keys there.
_OPEN_SECTIONS = ("model", "method", "optim")
_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD, "lars": LARS}


# --------------------------------------------------------------------------------------------------------- recipes
def load_recipe(recipe: str | os.PathLike) -> dict[str, Any]:
    """A recipe as a dict: ``recipe`` is a YAML path or the name of a file in :data:`RECIPES_DIR`."""
    path = Path(recipe)
    if not path.exists():
        named = RECIPES_DIR / f"{recipe}.yaml"
        if not named.exists():
            known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
            raise FileNotFoundError(f"recipe {recipe!r} is neither a file nor one of {known}")
        path = named
    cfg = yaml.safe_load(path.read_text())
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: a recipe is a YAML mapping")
    return cfg


def _leaves(cfg: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in cfg.items():
        out.extend(_leaves(v, prefix + (k,)) if isinstance(v, dict) and v else [prefix + (k,)])
    return out


def _key_path(cfg: dict[str, Any], key: str) -> tuple[str, ...]:
    if "." in key or "__" in key:
        path = tuple(key.replace("__", ".").split("."))
        node = cfg
        for i, part in enumerate(path):
            if not isinstance(node, dict):
                raise KeyError(f"override {key!r}: {'.'.join(path[:i])} is not a section")
            if part not in node and not (i == len(path) - 1 and i == 1 and path[0] in _OPEN_SECTIONS):
                raise KeyError(f"override {key!r}: no {'.'.join(path[:i + 1])!r} in the recipe (new keys are allowed "
                               f"only directly under {', '.join(_OPEN_SECTIONS)})")
            node = node.get(part, {})
        return path
    if key in cfg:
        return (key,)
    matches = [p for p in _leaves(cfg) if p[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise KeyError(f"override {key!r} matches no recipe value; use a dotted key such as 'optim.lr'")
    raise KeyError(f"override {key!r} is ambiguous: {', '.join('.'.join(m) for m in matches)}")


def _parse(text: str) -> Any:
    """A command-line string as YAML, with numbers such as ``1e-4`` (a string for YAML 1.1) read as floats."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def resolve_config(recipe: str | os.PathLike | dict[str, Any], overrides: dict[str, Any] | None = None
                   ) -> dict[str, Any]:
    """The recipe with ``overrides`` applied.

    Keys are dotted paths (``"optim.lr"``; ``"optim__lr"`` is the same, for Python keyword arguments) or flat leaf
    names when unique in the recipe (``lr``, ``epochs``, ``batch_size``; an ambiguous name such as ``name`` raises
    and lists the dotted candidates). Values replace recipe values; a string given for a non-string value is parsed
    as YAML (``"1e-4"``, ``"[1.0, 1.5]"``, ``"null"``). New keys are accepted only directly under ``model``,
    ``method`` and ``optim`` (they are keyword arguments of the encoder, the method and the optimizer).
    """
    cfg = copy.deepcopy(recipe) if isinstance(recipe, dict) else load_recipe(recipe)
    for key, value in (overrides or {}).items():
        path = _key_path(cfg, key)
        node = cfg
        for part in path[:-1]:
            node = node[part]
        old = node.get(path[-1])
        if isinstance(value, str) and not isinstance(old, str):
            value = _parse(value)
        if isinstance(old, dict) and isinstance(value, dict):
            value = {**old, **value}
        node[path[-1]] = value
    return cfg


# ----------------------------------------------------------------------------------------------------- device side
class RunningNorm(nn.Module):
    """Pre-normalization with running statistics (BYOL-A v1's option): while fewer than ``max_samples`` samples
    have been seen in training mode, each batch's moments are merged (exactly, float64, Chan et al.) into the
    running mean/variance, and the batch is normalized with the statistics so far (its own included). After that
    the statistics are frozen. ``count``, ``mean`` and ``m2`` are buffers (checkpointed); :meth:`stats` gives the
    values exported with the model. Under DDP each process accumulates its own data's statistics (rank 0's are
    exported)."""

    def __init__(self, max_samples: int) -> None:
        super().__init__()
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        self.max_samples = int(max_samples)
        self.register_buffer("samples", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("m2", torch.zeros((), dtype=torch.float64))
        self._samples = 0  # host mirror of `samples`: no device sync in the hot path

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._samples = int(self.samples)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self._samples < self.max_samples:
            xd = x.detach().double()
            n = float(xd.numel())
            mean_b = xd.mean()
            m2_b = ((xd - mean_b) ** 2).sum()
            total = self.count + n
            delta = mean_b - self.mean
            self.m2 = self.m2 + m2_b + delta ** 2 * self.count * n / total
            self.mean = self.mean + delta * n / total
            self.count = total
            self._samples += x.shape[0]
            self.samples.fill_(self._samples)
        std = (self.m2 / (self.count - 1).clamp(min=1)).sqrt().clamp(min=torch.finfo(torch.float32).eps)
        return (x - self.mean.to(x.dtype)) / std.to(x.dtype)

    def stats(self) -> NormStats:
        count = float(self.count)
        if count < 2:
            raise ValueError("RunningNorm has seen no data yet")
        return NormStats(mean=float(self.mean), std=math.sqrt(float(self.m2) / (count - 1)), count=int(count))


class AudioBatchViews(nn.Module):
    """``make_views`` for the trainer: waveforms ``[B, T]`` -> ``n_views`` views ``[B, 1, F, T']`` and batch
    statistics (mean/std of the log-mels after pre-normalization, and of all views before and after
    post-normalization, from ``AudioViews.last_stats``; left on the device, the trainer reads them once per step)."""

    def __init__(self, frontend: nn.Module, pre_norm: nn.Module, views: AudioViews, channels_last: bool = False) -> None:
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


# ------------------------------------------------------------------------------------------------------ statistics
def corpus_norm_stats(dataset: RandomCropDataset, frontend: nn.Module, max_samples: int, seed: int,
                      num_workers: int = 0, progress: bool = True) -> NormStats:
    """Exact log-mel mean/std over the crops (epoch 0) of up to ``max_samples`` files drawn at random (seeded)
    from ``dataset`` (BYOL-A v2 used 10,000 random training samples)."""
    n = min(int(max_samples), len(dataset))
    picked = np.sort(np.random.default_rng([seed, 7]).permutation(len(dataset))[:n])
    loader = DataLoader(Subset(dataset, picked.tolist()), batch_size=None, num_workers=num_workers)
    return compute_norm_stats(iter(loader), frontend, sample_rate=dataset.sample_rate, progress=progress)


def _norm_module(cfg: dict[str, Any], dataset: RandomCropDataset, frontend: nn.Module, out: Path, seed: int,
                 num_workers: int, resume: bool, progress: bool) -> tuple[nn.Module, NormStats | None]:
    """The pre-normalization module of ``norm.mode`` and its fixed statistics (None for running statistics)."""
    mode = cfg.get("mode", "corpus")
    if mode == "fixed":
        stats = NormStats(mean=float(cfg["mean"]), std=float(cfg["std"]), count=0)
        return PreNormalization.from_stats(stats), stats
    if mode == "running":
        samples = cfg.get("running_samples") or 2 * len(dataset)
        return RunningNorm(int(samples)), None
    if mode != "corpus":
        raise ValueError(f"norm.mode must be 'corpus', 'running' or 'fixed', got {mode!r}")
    path = out / "norm_stats.json"
    if resume and path.exists():
        stats = NormStats.from_dict(json.loads(path.read_text()))
    else:
        # Every process computes the same (deterministic) statistics: no rank waits on another, which could outlast
        # a collective's timeout on a large corpus, and no shared file system is assumed. Rank 0 keeps them.
        stats = corpus_norm_stats(dataset, frontend, int(cfg.get("max_samples", 10000)), seed, num_workers, progress)
        if dist_info().is_main:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(stats.to_dict()))
            os.replace(tmp, path)
    log.info("pre-normalization statistics: mean %.6g, std %.6g over %d values", stats.mean, stats.std, stats.count)
    return PreNormalization.from_stats(stats), stats


# ------------------------------------------------------------------------------------------------------ modalities
class ImageBatchViews(nn.Module):
    """``make_views`` for images: a ``uint8`` batch ``[B, 3, H, W]`` -> the views of ``views``
    (:class:`byola.augment.image.BYOLImageViews`, normalized float) and their mean/std for the log."""

    def __init__(self, views: BYOLImageViews, channels_last: bool = False) -> None:
        super().__init__()
        self.views, self.channels_last = views, channels_last

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        views = self.views(images.float() / 255.0)
        if self.channels_last:
            views = [v.contiguous(memory_format=torch.channels_last) for v in views]
        std, mean = torch.std_mean(torch.stack([v.detach() for v in views]))
        return views, {"views_mean_after": mean, "views_std_after": std}


@dataclass
class _Modality:
    """What the generic wiring needs from one modality."""

    dataset: Dataset
    make_views: nn.Module
    export_config: dict[str, Any]                  # the checkpoint's "frontend" entry
    norm_stats: Callable[[], NormStats | None]     # statistics exported with the model
    encoder_defaults: dict[str, Any]               # encoder keyword arguments unless the recipe sets them
    data_info: dict[str, Any]                      # provenance
    num_workers: int


def _audio_modality(cfg: dict[str, Any], sources: list[str], spec: MethodSpec, out_dir: Path, seed: int,
                    generator: torch.Generator, resume: bool, progress: bool) -> _Modality:
    """BYOL-A: random crops of audio files -> log-mel -> pre-norm -> ``spec.n_views`` views -> post-norm.
    BYOL-A has one augmentation pipeline: every view, whatever its ``view_augmentations`` index, comes from it."""
    dcfg, tcfg = cfg["data"], cfg["train"]
    files = scan_corpus(sources)
    sample_rate = int(dcfg.get("sample_rate", 16000))
    dataset = RandomCropDataset(files, unit_sec=float(dcfg.get("unit_sec", 0.95)), sample_rate=sample_rate,
                                seed=seed, pad=dcfg.get("pad", "center"), probe=bool(dcfg.get("probe", True)),
                                cache_dir=dcfg.get("cache_dir"), cache_dtype=dcfg.get("cache_dtype", "float32"))
    num_workers = int(dcfg.get("num_workers", 4))
    log.info("corpus: %d files (%d unreadable skipped) from %s", len(dataset), len(dataset.unreadable), sources)
    frontend = LogMelSpectrogram(sample_rate=sample_rate, **cfg.get("frontend", {}))
    pre_norm, fixed_stats = _norm_module(cfg.get("norm", {}), dataset, frontend, out_dir, seed, num_workers,
                                         resume, progress)
    acfg = dict(cfg.get("augment", {}))
    views = AudioViews.byola(acfg.pop("version", "v2"), n_views=spec.n_views, generator=generator,
                             **{k: tuple(v) if isinstance(v, list) else v for k, v in acfg.items()})
    make_views = AudioBatchViews(frontend, pre_norm, views, channels_last=bool(tcfg.get("channels_last")))
    return _Modality(dataset, make_views, frontend.config(), lambda: fixed_stats or pre_norm.stats(),
                     {"n_mels": frontend.n_mels}, {"files": len(dataset), "unreadable": len(dataset.unreadable)},
                     num_workers)


def _image_modality(cfg: dict[str, Any], sources: list[str], spec: MethodSpec, generator: torch.Generator
                    ) -> _Modality:
    """BYOL images: ``data.dataset`` folder | cifar10 | stl10 -> BYOL's augmentations, one per
    ``spec.view_augmentations`` entry (TriBYOL: v1 from augmentation 1, v2 and v3 from augmentation 2)."""
    dcfg, tcfg = cfg["data"], cfg["train"]
    kind = dcfg.get("dataset", "folder")
    dataset = build_image_dataset(kind, sources, size=dcfg.get("size"), split=dcfg.get("split", "train"))
    acfg = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.get("augment", {}).items()}
    size = acfg.pop("size")
    views = BYOLImageViews(size, view_augmentations=spec.view_augmentations, generator=generator, **acfg)
    export = {"modality": "image", "size": list(views.aug1.size), "mean": views.aug1.mean, "std": views.aug1.std}
    log.info("images: %s, %d items from %s", kind, len(dataset), sources)
    return _Modality(dataset, ImageBatchViews(views, channels_last=bool(tcfg.get("channels_last"))), export,
                     lambda: None, {}, {"dataset": kind, "items": len(dataset)}, int(dcfg.get("num_workers", 4)))


# ----------------------------------------------------------------------------------------------------------- main
def pretrain(data: Sequence[str] | str, recipe: str, out: str, resume: bool = False, **overrides: Any) -> Path:
    """Pretrain an encoder with a BYOL-family method following ``recipe`` (a name in ``recipes/`` such as
    ``"byola_v2"`` or a YAML path), in the run folder ``out``; ``resume`` continues an interrupted run from its
    newest checkpoint. ``overrides`` change recipe values (``**{"optim.lr": 1e-4}``, ``optim__lr=1e-4`` or
    ``lr=1e-4``; see :func:`resolve_config`); ``method.name`` selects any method of
    :data:`byola.engine.methods.METHODS`.

    The recipe's ``modality`` (default ``audio``) chooses the data: ``audio``: ``data`` is folders (searched
    recursively), audio files and text files listing paths (BYOL-A pipeline); ``image``: ``data`` is image folders
    (``data.dataset: folder``) or the root folder of torchvision's CIFAR-10 / STL-10 (``cifar10`` / ``stl10``).

    Under ``torchrun`` every process runs this function; they train with DDP and only rank 0 writes. Returns the
    path of the final model (``out/model.safetensors``), loadable with :func:`byola.checkpoint.load_checkpoint`.
    """
    t_start = time.time()
    recipe_name = Path(recipe).stem
    cfg = resolve_config(recipe, overrides)
    modality = cfg.get("modality", "audio")
    if modality not in ("audio", "image"):
        raise ValueError(f"recipe modality must be 'audio' or 'image', got {modality!r}")
    out_dir = Path(out)
    seed = int(cfg.get("seed", 0))
    tcfg = cfg["train"]
    device = torch.device(tcfg["device"]) if tcfg.get("device") else default_device()
    if not resume and latest_checkpoint(out_dir) is not None:
        raise FileExistsError(f"{out_dir} holds a run: pass resume=True (--resume) to continue it, or choose another "
                              "--out")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = bool(tcfg.get("cudnn_benchmark", True))  # fixed crop size: pick fast kernels
    created_group = init_distributed(device)
    info = dist_info()
    try:
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            saved = out_dir / "config.yaml"
            if resume and saved.exists():
                before = yaml.safe_load(saved.read_text())
                if before != cfg:
                    log.warning("resuming with a configuration that differs from %s", saved)
            saved.write_text(yaml.safe_dump(cfg, sort_keys=False))
        if info.world_size > 1:
            dist.barrier()

        sources = [data] if isinstance(data, str) else list(data)
        progress = bool(tcfg.get("progress", True)) and info.is_main
        method_cfg = dict(cfg["method"])
        method_name = method_cfg.pop("name")
        spec = get_method(method_name, **method_spec_overrides(method_cfg))  # as build_method resolves it
        generator = torch.Generator(device=device).manual_seed(seed * 1000 + info.rank)
        if modality == "audio":
            mod = _audio_modality(cfg, sources, spec, out_dir, seed, generator, resume, progress)
        else:
            mod = _image_modality(cfg, sources, spec, generator)

        # The model is built from the same seed on every rank (DDP also broadcasts rank 0's weights).
        torch.manual_seed(seed)
        mcfg = {**mod.encoder_defaults, **cfg["model"]}
        encoder = build_encoder(mcfg.pop("name"), **mcfg)
        # BN-free specs: build_method converts the encoder, and its exported config records the norm
        engine = build_method(method_name, encoder, encoder.embed_dim, **method_cfg)
        if tcfg.get("channels_last"):
            engine.to(memory_format=torch.channels_last)
        if tcfg.get("compile"):
            encoder.compile()  # in place: parameter names (and checkpoints) are unchanged

        ocfg = dict(cfg["optim"])
        opt_name = ocfg.pop("name", "adam").lower()
        if opt_name not in _OPTIMIZERS:
            raise ValueError(f"optim.name must be one of {sorted(_OPTIMIZERS)}, got {opt_name!r}")
        optimizer_cls = _OPTIMIZERS[opt_name]

        keep = int(tcfg.get("keep_checkpoints", 2))
        provenance_base = {
            "recipe": recipe_name, "config": cfg, "modality": modality,
            "method": spec.to_dict(),
            "data": {"sources": [os.path.abspath(s) for s in sources], **mod.data_info},
            "byola_version": byola.__version__, "torch_version": torch.__version__,
            "hardware": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
                         or platform.machine(), "world_size": info.world_size},
        }

        def export(step: int, final: bool) -> None:
            path = out_dir / ("model.safetensors" if final else f"model-step{step:08d}.safetensors")
            provenance = {**provenance_base, "step": step, "total_steps": trainer.total_steps, "final": final,
                          "wall_time_s": round(time.time() - t_start, 1),
                          "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            save_checkpoint(path, encoder, mod.export_config, mod.norm_stats(), provenance)
            periodic = sorted(out_dir.glob("model-step*.safetensors"))
            for old in periodic[:-keep]:
                old.unlink()

        trainer = Trainer(
            engine, lambda params: optimizer_cls(params, **ocfg), mod.dataset, mod.make_views, out_dir,
            batch_size=int(tcfg["batch_size"]), epochs=None if tcfg.get("steps") else int(tcfg["epochs"]),
            steps=int(tcfg["steps"]) if tcfg.get("steps") else None, seed=seed,
            lr_schedule=tcfg.get("lr_schedule", "constant"), warmup_steps=int(tcfg.get("warmup_steps", 0)),
            min_lr_ratio=float(tcfg.get("min_lr_ratio", 0.0)), accum_steps=int(tcfg.get("accum_steps", 1)),
            amp=tcfg.get("amp", "auto"), grad_clip=tcfg.get("grad_clip"),
            checkpoint_every=int(tcfg.get("checkpoint_every", 1000)), keep_checkpoints=keep, export=export,
            num_workers=mod.num_workers, pin_memory=None, device=device, progress=progress,
            prefetch_factor=tcfg.get("prefetch_factor"), sync_bn=bool(tcfg.get("sync_bn", False)))
        log.info("training %s (%s, %s) for %d steps (%d batches of %d per epoch per process) on %s", recipe_name,
                 modality, method_name, trainer.total_steps, trainer.batches_per_epoch, trainer.batch_size, device)
        trainer.fit(resume=resume)
        return out_dir / "model.safetensors"
    finally:
        if created_group:
            dist.destroy_process_group()
