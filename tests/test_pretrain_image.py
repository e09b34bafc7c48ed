"""Image pretraining through the recipe machinery (modality: image), image datasets, and TriBYOL on audio."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from byola.checkpoint import load_checkpoint
from byola.layers import has_batchnorm
from byola.image_data import ImageFolderDataset, TorchvisionImages, build_image_dataset
from byola.modalities.image import ImageBatchViews
from byola.pretrain import pretrain
from byola.recipe import resolve_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"   # this checkout's recipes (not the installed copy)
TINY_IMAGE = {"model.channels": [4, 8], "method.projector_hidden": 16, "method.projector_dim": 8,
              "method.predictor_hidden": 16, "train.batch_size": 4, "train.steps": 3, "train.warmup_steps": 1,
              "seed": 3}


pytestmark = pytest.mark.usefixtures("one_thread")


def _write_images(folder: Path, n: int, size: tuple[int, int], seed: int = 0, gray: bool = False) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        img = torch.randint(0, 256, (1 if gray else 3, *size), generator=g, dtype=torch.uint8)
        Image.fromarray(img.permute(1, 2, 0).squeeze(-1).numpy()).save(folder / f"img{i:02d}.png")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("images")
    _write_images(root, 12, (8, 8))
    return root


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_image_folder_labeled_unlabeled_and_resized(tmp_path: Path) -> None:
    _write_images(tmp_path / "lab" / "cat", 2, (10, 14))
    _write_images(tmp_path / "lab" / "dog", 3, (12, 12), seed=1, gray=True)   # grayscale decodes as RGB
    ds = ImageFolderDataset(tmp_path / "lab", size=8)
    assert ds.classes == ["cat", "dog"] and ds.targets == [0, 0, 1, 1, 1] and len(ds) == 5
    item = ds[4]
    assert item.dtype == torch.uint8 and item.shape == (3, 8, 8)
    _write_images(tmp_path / "flat", 2, (9, 9))
    _write_images(tmp_path / "flat" / "sub", 1, (9, 9))
    flat = ImageFolderDataset(tmp_path / "flat")
    assert flat.classes == [] and flat.targets == [-1] * 3 and flat[0].shape == (3, 9, 9)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "flat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        ImageFolderDataset(tmp_path / "flat")[0]


@pytest.mark.parametrize(("name", "folder"), [("cifar10", "cifar-10-batches-py"), ("stl10", "stl10_binary")])
def test_missing_torchvision_dataset_is_a_clear_error(tmp_path: Path, name: str, folder: str) -> None:
    with pytest.raises(FileNotFoundError, match=f"{folder}.*never downloads"):
        TorchvisionImages(name, tmp_path)
    assert not any(tmp_path.iterdir())                                   # nothing was fetched or created
    with pytest.raises(ValueError, match="one root"):
        build_image_dataset(name, [str(tmp_path), str(tmp_path)])


def test_image_batch_views_follow_the_methods_view_augmentations() -> None:
    from byola.augment.image import BYOLImageViews

    views = BYOLImageViews(8, view_augmentations=(0, 1, 1), generator=torch.Generator().manual_seed(0))
    out, stats = ImageBatchViews(views)(torch.randint(0, 256, (4, 3, 10, 10), dtype=torch.uint8))
    assert len(out) == 3 and all(v.shape == (4, 3, 8, 8) for v in out) and set(stats) == {"views_mean_after",
                                                                                         "views_std_after"}
    assert views.aug1.blur_p == 1.0 and views.aug2.solarize_p == 0.2
    with pytest.raises(ValueError, match="uint8"):
        ImageBatchViews(views)(torch.rand(4, 3, 10, 10))


@pytest.mark.parametrize("method", ["byol", "tribyol", "byol_bnfree"])
def test_tiny_image_pretraining_through_the_recipe(image_folder: Path, tmp_path: Path, method: str) -> None:
    run = tmp_path / "run"
    final = pretrain([str(image_folder)], str(RECIPES / "byol_digits.yaml"), str(run),
                     **{**TINY_IMAGE, "method.name": method})
    rows = _rows(run)
    assert len(rows) == 3 and all(math.isfinite(float(r["loss"])) for r in rows)
    if method == "tribyol":   # both targets' pairs are logged: three views reached the engine
        assert {"byol/0-0-1", "byol/1-0-0", "byol/0-1-2", "byol/2-1-0"} <= set(rows[0])
    encoder, meta = load_checkpoint(final)
    assert meta["modality"] == "image"  # checkpoint format 2: the modality is top-level (format 1 kept it here)
    assert meta["frontend"] == {"size": [16, 16], "mean": [0.5] * 3, "std": [0.5] * 3}
    assert meta["norm_stats"] is None and meta["provenance"]["method"]["name"] == method
    assert has_batchnorm(encoder) == (method != "byol_bnfree")
    assert encoder(torch.rand(2, 3, 16, 16)).shape == (2, 8)


def test_image_recipes_hold_their_values() -> None:
    cifar = resolve_config(RECIPES / "byol_cifar10.yaml")
    stl = resolve_config(RECIPES / "byol_stl10.yaml")
    assert cifar["modality"] == stl["modality"] == "image"
    assert (cifar["model"]["name"], stl["model"]["name"]) == ("resnet18_cifar", "resnet50")
    assert cifar["optim"]["name"] == stl["optim"]["name"] == "lars"
    assert cifar["method"]["tau_base"] == 0.99 and cifar["method"]["tau_schedule"] == "cosine"
    assert cifar["train"]["lr_schedule"] == "cosine" and cifar["train"]["warmup_steps"] > 0
    assert (cifar["augment"]["size"], stl["augment"]["size"]) == (32, 96)
    assert (cifar["data"]["dataset"], stl["data"]["dataset"]) == ("cifar10", "stl10")


def test_cifar_recipe_without_data_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        pretrain([str(tmp_path / "nothing")], str(RECIPES / "byol_cifar10.yaml"), str(tmp_path / "run"))


def test_tribyol_on_audio_through_the_recipe(tmp_path: Path) -> None:
    corpus = tmp_path / "audio"
    corpus.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        t = np.arange(int(16000 * (0.5 + 0.1 * i))) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t) + 0.01 * rng.standard_normal(t.shape)
        sf.write(corpus / f"c{i}.wav", wave.astype(np.float32), 16000)
    tiny = {"model.d": 48, "model.mlp_hidden_d": 16, "model.conv_channels": 4, "frontend.n_mels": 16,
            "method.projector_hidden": 32, "method.projector_dim": 16, "method.predictor_hidden": 32,
            "augment.bank_size": 16, "norm.max_samples": 8, "data.num_workers": 0, "train.batch_size": 4,
            "train.steps": 2, "train.progress": False}
    final = pretrain([str(corpus)], str(RECIPES / "tribyola.yaml"), str(tmp_path / "run"), **tiny)
    rows = _rows(tmp_path / "run")
    assert len(rows) == 2 and all(math.isfinite(float(r["loss"])) for r in rows)
    assert {"byol/0-1-2", "byol/2-1-0"} <= set(rows[0])
    _, meta = load_checkpoint(final)
    assert meta["provenance"]["method"]["name"] == "tribyol" and meta["provenance"]["method"]["n_targets"] == 2
