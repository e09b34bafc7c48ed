"""Images (BYOL): ``uint8`` images from :mod:`byola.image_data` (a folder, CIFAR-10 or STL-10 on disk);
:class:`ImageBatchViews` makes BYOL's views on the device (:class:`byola.augment.image.BYOLImageViews`, one
augmentation per entry of the method's ``view_augmentations``: TriBYOL's v1 from augmentation 1, v2 and v3 from
augmentation 2). Checkpoints carry ``{size, mean, std}`` as their input configuration and no normalization
statistics.
"""
from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from byola.augment.image import BYOLImageAugment, BYOLImageViews
from byola.image_data import build_image_dataset
from byola.modalities.base import Modality, Pipeline, PipelineContext

__all__ = ["IMAGE", "ImageData", "ImageAugment", "ImageBatchViews"]

log = logging.getLogger(__name__)

_AUG = {k: p.default for k, p in inspect.signature(BYOLImageAugment).parameters.items()}
_VIEWS = {k: p.default for k, p in inspect.signature(BYOLImageViews).parameters.items()}


@dataclass(frozen=True)
class ImageData:
    """``data``: ``dataset`` folder (``size``: decoded images brought to this side) | cifar10 | stl10."""

    dataset: Literal["folder", "cifar10", "stl10"] = "folder"
    split: str = "train"
    size: int | None = field(default=None, metadata={"min": 1})
    num_workers: int = field(default=4, metadata={"min": 0})


@dataclass(frozen=True)
class ImageAugment:
    """``augment``: BYOL's two augmentations (:class:`byola.augment.image.BYOLImageAugment`, its defaults); the
    pairs ``blur_p`` and ``solarize_p`` give the first and the second augmentation's probability."""

    size: int = field(metadata={"min": 1})
    crop_scale: tuple[float, float] = _AUG["crop_scale"]
    crop_ratio: tuple[float, float] = _AUG["crop_ratio"]
    interpolation: str = _AUG["interpolation"]
    flip_p: float = _AUG["flip_p"]
    jitter_p: float = _AUG["jitter_p"]
    brightness: float = _AUG["brightness"]
    contrast: float = _AUG["contrast"]
    saturation: float = _AUG["saturation"]
    hue: float = _AUG["hue"]
    jitter_random_order: bool = _AUG["jitter_random_order"]
    grayscale_p: float = _AUG["grayscale_p"]
    blur_p: tuple[float, float] = _VIEWS["blur_p"]
    blur_sigma: tuple[float, float] = _AUG["blur_sigma"]
    blur_kernel_size: int | None = _AUG["blur_kernel_size"]
    solarize_p: tuple[float, float] = _VIEWS["solarize_p"]
    solarize_threshold: float = _AUG["solarize_threshold"]
    mean: tuple[float, ...] = tuple(_AUG["mean"])
    std: tuple[float, ...] = tuple(_AUG["std"])


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


def _check(inputs: dict[str, Any], model_params: dict[str, Any]) -> None:
    if model_params.get("in_channels", 3) != 3:
        raise ValueError(f"model.in_channels must be 3 (images are decoded as RGB), got {model_params['in_channels']}")
    augment = inputs["augment"]
    if not len(augment.mean) == len(augment.std) == 3:
        raise ValueError(f"augment.mean and augment.std need 3 values (RGB), got {augment.mean}, {augment.std}")


def _dataset(inputs: dict[str, Any], sources: Sequence[str], seed: int) -> Dataset:
    d: ImageData = inputs["data"]
    dataset = build_image_dataset(d.dataset, sources, size=d.size, split=d.split)
    log.info("images: %s, %d items from %s", d.dataset, len(dataset), sources)
    return dataset


def _pipeline(ctx: PipelineContext) -> Pipeline:
    augment = dict(vars(ctx.inputs["augment"]))
    views = BYOLImageViews(augment.pop("size"), view_augmentations=ctx.spec.view_augmentations,
                           generator=ctx.generator, **augment)
    export = {"size": list(views.aug1.size), "mean": views.aug1.mean, "std": views.aug1.std}
    data = ctx.inputs["data"]
    return Pipeline(ImageBatchViews(views, channels_last=ctx.channels_last), export, lambda: None,
                    {"dataset": data.dataset, "items": len(ctx.dataset)}, data.num_workers)


IMAGE = Modality("image", {"data": ImageData, "augment": ImageAugment}, lambda inputs: {}, _check, _dataset,
                 _pipeline)
