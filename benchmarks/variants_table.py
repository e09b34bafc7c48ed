"""Every registered BYOL-family method on real images and BYOL/TriBYOL on real audio, each trained through the
recipe machinery (``byola.pretrain.pretrain``: the one training loop) and scored by a linear probe on frozen
embeddings next to a randomly initialized encoder of the same architecture.

Images: scikit-learn's 8×8 digits (1,797 images; fixed stratified split 1,257 train / 540 test, seed 0). The train
images are written as PNGs to a temporary folder and pretrained on with ``recipes/byol_digits.yaml`` (BYOL's image
augmentations at 16 px, small CNN 16-32-64) and ``--method.name`` = each method. Probe: the full image resized to
16 px (bicubic, as the views' crops), normalized like the views, logistic regression on standardized embeddings.

Audio: the Free Spoken Digit Dataset (``/work/shared/data/fsdd``, 10 digits): BYOL-A v2 (``byola_v2``, method
``byola``) and TriBYOL (``tribyola``) pretrained on the train-split clips with a small AudioNTT2020 (16 conv
channels, d 256), at batch sizes 16 and 64, the same number of steps each; probe on 1-s clips of the train split,
scored on the test split. Each run is compared with the weights it started from (the random init of its seed), over
several seeds: the probe accuracy of the random encoder alone varies by about 9 points across seeds. A second
baseline gives that random encoder BatchNorm statistics measured on the train clips (a fresh BatchNorm has mean 0,
variance 1, i.e. acts as the identity in eval mode).

    PYTHONPATH=. python benchmarks/variants_table.py [--part images|audio|all] [--seeds 0,1] [--steps 300]

Torch runs on one thread (this machine's 2 cores are shared); the defaults take about 15-20 minutes.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from PIL import Image

from byola.audio import load_audio
from byola.checkpoint import load_checkpoint
from byola.embed import load
from byola.engine import METHODS
from byola.models import build_encoder
from byola.pretrain import pretrain, resolve_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
FSDD = Path("/work/shared/data/fsdd")


def probe(train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray) -> float:
    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(max_iter=3000).fit(scaler.transform(train), y_train)
    return float(clf.score(scaler.transform(test), y_test))


def final_loss(run: Path) -> tuple[float, float]:
    with open(run / "log.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    return float(np.mean(losses[:10])), float(np.mean(losses[-10:]))


# ------------------------------------------------------------------------------------------------------- images
@torch.no_grad()
def embed_images(encoder: torch.nn.Module, images: torch.Tensor, frontend: dict) -> np.ndarray:
    """``images`` uint8 [N, 3, 8, 8] -> embeddings, with the checkpoint's view size and normalization."""
    x = F.interpolate(images.float() / 255.0, size=tuple(frontend["size"]), mode="bicubic", antialias=True)
    mean, std = (torch.tensor(frontend[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    x = (x.clamp(0, 1) - mean) / std
    return encoder.eval()(x).numpy()


def image_table(args: argparse.Namespace, work: Path) -> None:
    digits = load_digits()
    images = torch.tensor(digits.images * 255.0 / 16.0).round().to(torch.uint8)[:, None].repeat(1, 3, 1, 1)
    idx_tr, idx_te = train_test_split(np.arange(len(images)), test_size=0.3, random_state=0, stratify=digits.target)
    folder = work / "digits"
    folder.mkdir()
    for i in idx_tr:
        Image.fromarray(images[i].permute(1, 2, 0).numpy()).save(folder / f"{i:04d}.png")
    recipe = RECIPES / "byol_digits.yaml"
    cfg = resolve_config(recipe, {"train.steps": args.steps})
    methods = args.methods.split(",") if args.methods else list(METHODS)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"\n## Images: digits ({len(idx_tr)} train / {len(idx_te)} test), recipe byol_digits "
          f"({cfg['model']['name']} {cfg['model']['channels']}, views {cfg['augment']['size']} px, "
          f"batch {cfg['train']['batch_size']}, {args.steps} steps), torch threads {torch.get_num_threads()}")
    header = "| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | random init, same arch (mean) | "
    print(header + f"loss first→last (seed {seeds[0]}) | s/run |\n|---|" + "---|" * (len(seeds) + 4))
    frontend = {"size": [cfg["augment"]["size"]] * 2, "mean": cfg["augment"]["mean"], "std": cfg["augment"]["std"]}
    y_tr, y_te = digits.target[idx_tr], digits.target[idx_te]

    def random_init(spec_name: str) -> list[float]:
        """Probe accuracy of the untrained encoder with the method's backbone (BN-free methods change it)."""
        spec, out = METHODS[spec_name], []
        for seed in seeds:
            torch.manual_seed(seed)
            mcfg = dict(cfg["model"])
            enc = build_encoder(mcfg.pop("name"), backbone_norm=spec.backbone_norm,
                                weight_standardization=spec.weight_standardization, **mcfg)
            out.append(probe(embed_images(enc, images[idx_tr], frontend), y_tr,
                             embed_images(enc, images[idx_te], frontend), y_te))
        return out

    base = random_init("byol")
    print(f"| random init | {' | '.join(f'{a:.4f}' for a in base)} | {np.mean(base):.4f} | | | |", flush=True)
    for name in methods:
        spec = METHODS[name]
        same_arch = np.mean(random_init(name)) if spec.backbone_norm or spec.weight_standardization else np.mean(base)
        accs, t0, losses = [], time.perf_counter(), None
        for seed in seeds:
            run = work / f"img-{name}-{seed}"
            model = pretrain(str(folder), str(recipe), str(run), **{"train.steps": args.steps, "method.name": name,
                                                                    "seed": seed})
            encoder, meta = load_checkpoint(model)
            accs.append(probe(embed_images(encoder, images[idx_tr], meta["frontend"]), y_tr,
                              embed_images(encoder, images[idx_te], meta["frontend"]), y_te))
            losses = losses or final_loss(run)
        seconds = (time.perf_counter() - t0) / len(seeds)
        print(f"| {name} | {' | '.join(f'{a:.4f}' for a in accs)} | {np.mean(accs):.4f} | {same_arch:.4f} | "
              f"{losses[0]:.3f} → {losses[1]:.3f} | {seconds:.0f} |", flush=True)


# -------------------------------------------------------------------------------------------------------- audio
def fsdd_clips(split: str, seconds: float = 1.0) -> tuple[torch.Tensor, np.ndarray, list[Path]]:
    with open(FSDD / "fsdd_digit.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    n = int(16000 * seconds)
    waves = torch.zeros(len(rows), n)
    for i, r in enumerate(rows):
        w = load_audio(FSDD / r["file_name"], 16000)[:n]
        start = (n - w.shape[0]) // 2
        waves[i, start:start + w.shape[0]] = w
    return waves, np.array([int(r["label"]) for r in rows]), [FSDD / r["file_name"] for r in rows]


@torch.no_grad()
def embed_waves(embedder: torch.nn.Module, waves: torch.Tensor, batch: int = 128) -> np.ndarray:
    return torch.cat([embedder.embed_batch(waves[i:i + batch]) for i in range(0, len(waves), batch)]).numpy()


@torch.no_grad()
def with_data_bn_statistics(embedder: torch.nn.Module, waves: torch.Tensor, batch: int = 128) -> torch.nn.Module:
    """Replace the encoder's BatchNorm running statistics by the exact statistics of its inputs on ``waves`` (the
    pretraining clips; no labels): the random network as it would be if it had only seen the data, not the loss."""
    encoder = embedder.encoder
    norms = [m for m in encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over all batches
    encoder.train()
    for i in range(0, len(waves), batch):
        encoder(embedder._normalized_logmel(waves[i:i + batch]).unsqueeze(1))
    encoder.eval()
    return embedder


def audio_table(args: argparse.Namespace, work: Path) -> None:
    if not (FSDD / "fsdd_digit.csv").exists():
        print(f"\n## Audio: skipped ({FSDD} is absent)")
        return
    tr, y_tr, files = fsdd_clips("train")
    te, y_te, _ = fsdd_clips("test")
    corpus = work / "fsdd_train.txt"
    corpus.write_text("\n".join(str(p) for p in files))
    small = {"model.name": "AudioNTT2020", "model.d": 256, "model.conv_channels": 16,
             "method.projector_hidden": 1024, "method.projector_dim": 128, "method.predictor_hidden": 1024,
             "norm.max_samples": 500,
             "augment.bank_size": 512, "data.num_workers": 0, "train.steps": args.audio_steps,
             "train.progress": False, "train.checkpoint_every": 100000, "optim.lr": 3e-4}
    seeds = [int(s) for s in args.audio_seeds.split(",")]
    print(f"\n## Audio: FSDD digits ({len(tr)} train / {len(te)} test clips of 1 s), AudioNTT2020 conv 16 d 256, "
          f"heads 1024/128, Adam 3e-4, {args.audio_steps} steps, pretrained on the train clips, seeds {seeds}")
    print("Each run is paired with its own starting point: the random init of the same seed (the weights the run "
          "started from), same frontend and normalization statistics; 'random, data BN' is that init with its "
          "BatchNorm running statistics measured on the pretraining clips (at init they are mean 0, variance 1).")
    print("| method (recipe) | batch | trained, per seed | random init, per seed | random, data BN, per seed "
          "| trained mean | random mean | random, data BN mean | paired gain over random (mean, min) "
          "| loss first→last (seed 0) | s/run |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for recipe, label in (("byola_v2", "BYOL (byola_v2, byola)"), ("tribyola", "TriBYOL (tribyola)")):
        for batch in (int(b) for b in args.audio_batches.split(",")):
            accs, rnds, rnd_bns, seconds, losses = [], [], [], 0.0, None
            for seed in seeds:
                run = work / f"audio-{recipe}-{batch}-{seed}"
                t0 = time.perf_counter()
                model = pretrain([str(corpus)], str(RECIPES / f"{recipe}.yaml"), str(run),
                                 **{**small, "train.batch_size": batch, "seed": seed})
                seconds += time.perf_counter() - t0
                emb = load(model)
                accs.append(probe(embed_waves(emb, tr), y_tr, embed_waves(emb, te), y_te))
                rnd = load(model, random_init=seed)  # pretrain seeds the model with `seed`: the run's own init
                rnds.append(probe(embed_waves(rnd, tr), y_tr, embed_waves(rnd, te), y_te))
                rnd = with_data_bn_statistics(load(model, random_init=seed, optimize=False), tr)
                rnd_bns.append(probe(embed_waves(rnd, tr), y_tr, embed_waves(rnd, te), y_te))
                losses = losses or final_loss(run)
            gains = np.subtract(accs, rnds)
            print(f"| {label} | {batch} | {' '.join(f'{a:.4f}' for a in accs)} | {' '.join(f'{a:.4f}' for a in rnds)} "
                  f"| {' '.join(f'{a:.4f}' for a in rnd_bns)} | {np.mean(accs):.4f} | {np.mean(rnds):.4f} "
                  f"| {np.mean(rnd_bns):.4f} | {gains.mean():+.4f}, {gains.min():+.4f} "
                  f"| {losses[0]:.3f} → {losses[1]:.3f} | {seconds / len(seeds):.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("images", "audio", "all"), default="all")
    parser.add_argument("--steps", type=int, default=300, help="image pretraining steps per method")
    parser.add_argument("--audio_steps", type=int, default=150, help="audio pretraining steps per run")
    parser.add_argument("--audio_batches", default="16,64", help="comma-separated audio batch sizes")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds of the image runs")
    parser.add_argument("--audio_seeds", default="0,1,2", help="comma-separated seeds of the audio runs")
    parser.add_argument("--methods", default="", help="comma-separated methods (default: all registered)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="byola-variants-") as tmp:
        t0 = time.perf_counter()
        if args.part in ("images", "all"):
            image_table(args, Path(tmp))
        if args.part in ("audio", "all"):
            audio_table(args, Path(tmp))
        print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
