"""Batched, device-agnostic augmentations: BYOL-A's audio views (``audio``) and BYOL's image views (``image``)."""
from byola.augment.audio import AudioViews, MixupBank, RandomLinearFader, RandomResizeCrop
from byola.augment.image import BYOLImageAugment, BYOLImageViews, byol_view_pair

__all__ = ["AudioViews", "MixupBank", "RandomLinearFader", "RandomResizeCrop", "BYOLImageAugment", "BYOLImageViews",
           "byol_view_pair"]
