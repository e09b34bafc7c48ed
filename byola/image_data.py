"""Image datasets for pretraining: a folder of images, or torchvision's CIFAR-10 / STL-10 read from disk.

Items are ``uint8`` tensors ``[3, H, W]`` of one fixed size, so batches collate into ``[B, 3, H, W]`` and the
batched augmentations (:class:`byola.augment.image.BYOLImageViews`) run on the device. Nothing is downloaded.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from byola.extras import optional_module

Image = optional_module("PIL.Image", "image")  # the `image` extra
TF = optional_module("torchvision.transforms.v2.functional", "image")

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderDataset", "TorchvisionImages", "build_image_dataset"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class ImageFolderDataset(Dataset):
    """Every image under ``roots`` (recursive, extensions :data:`IMAGE_EXTENSIONS`, any case), decoded as RGB
    with PIL (torchvision.io's decoders are deprecated in favour of torchcodec, not a dependency here) and
    brought to ``size`` × ``size``: the shorter side resized to ``size`` (bilinear, antialiased), then a centre
    crop (``size=None`` keeps the decoded size; then all images must share it).

    Labels: when every image of a root lies in a first-level subfolder, the subfolder names are the classes
    (sorted, as torchvision's ``ImageFolder``) and ``targets`` holds each item's class index; otherwise the data is
    unlabeled (``classes == []``, ``targets`` all -1). Files that cannot be decoded raise ``ValueError`` naming the
    file when read.
    """

    def __init__(self, roots: str | os.PathLike | Sequence[str | os.PathLike], size: int | None = None) -> None:
        roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
        files: list[Path] = []
        for root in map(Path, roots):
            if not root.is_dir():
                raise FileNotFoundError(f"image folder {root} does not exist")
            files += sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {[str(r) for r in roots]}")
        self.files = files
        self.size = size
        parents = [f.parent for f in files]
        labeled = all(any(p.parent == Path(r) for r in roots) for p in parents)
        self.classes = sorted({p.name for p in parents}) if labeled else []
        index = {c: i for i, c in enumerate(self.classes)}
        self.targets = [index[p.name] if labeled else -1 for p in parents]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        path = self.files[i]
        try:
            with Image.open(path) as pil:
                img = TF.pil_to_tensor(pil.convert("RGB"))
        except (OSError, Image.UnidentifiedImageError, ValueError) as e:
            raise ValueError(f"{path}: cannot decode image: {e}") from None
        if self.size is not None:
            img = TF.center_crop(TF.resize(img, self.size, antialias=True), [self.size, self.size])
        return img


class TorchvisionImages(Dataset):
    """torchvision's CIFAR-10 or STL-10 from ``root`` (``download=False``), items as ``uint8 [3, H, W]``.

    ``name``: ``"cifar10"`` (split ``train`` or ``test``; 32×32) or ``"stl10"`` (``train``, ``test``, ``unlabeled``
    or ``train+unlabeled``, the usual self-supervised set; 96×96). A missing dataset raises ``FileNotFoundError``
    saying which folder torchvision expects under ``root``.
    """

    _EXPECTED = {"cifar10": ("CIFAR10", "cifar-10-batches-py"), "stl10": ("STL10", "stl10_binary")}

    def __init__(self, name: str, root: str | os.PathLike, split: str = "train") -> None:
        from torchvision import datasets

        if name not in self._EXPECTED:
            raise ValueError(f"dataset must be one of {sorted(self._EXPECTED)}, got {name!r}")
        try:
            if name == "cifar10":
                if split not in ("train", "test"):
                    raise ValueError(f"cifar10 split must be 'train' or 'test', got {split!r}")
                ds = datasets.CIFAR10(str(root), train=split == "train", download=False)
                self.data = torch.from_numpy(ds.data).permute(0, 3, 1, 2)          # [N, 32, 32, 3] -> NCHW
            else:
                ds = datasets.STL10(str(root), split=split, download=False)
                self.data = torch.from_numpy(ds.data)                               # [N, 3, 96, 96]
        except RuntimeError as e:
            cls, folder = self._EXPECTED[name]
            raise FileNotFoundError(
                f"{name} not found under {root} (expected {Path(root) / folder}, torchvision's layout; byola never "
                f"downloads data: fetch it once, e.g. torchvision.datasets.{cls}(root, download=True)): {e}") from None
        self.name, self.split = name, split
        self.targets = [int(t) for t in getattr(ds, "targets", getattr(ds, "labels", []))]

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.data[i]


def build_image_dataset(kind: str, sources: Sequence[str], size: int | None = None, split: str = "train"
                        ) -> Dataset:
    """``kind`` ``"folder"`` (:class:`ImageFolderDataset` over ``sources`` at ``size``) or ``"cifar10"`` /
    ``"stl10"`` (:class:`TorchvisionImages` with root ``sources[0]``)."""
    if kind == "folder":
        return ImageFolderDataset(sources, size=size)
    if len(sources) != 1:
        raise ValueError(f"{kind}: give one root folder, got {list(sources)}")
    return TorchvisionImages(kind, sources[0], split=split)
