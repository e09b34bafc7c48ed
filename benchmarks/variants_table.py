"""Every registered BYOL-family method on real images and BYOL/TriBYOL on real audio, each trained through the
recipe machinery (``byola.pretrain.pretrain``: the one training loop) and scored by a linear probe on frozen
embeddings next to a randomly initialized encoder of the same architecture.

Images: scikit-learn's 8×8 digits (1,797 images; fixed stratified split 1,257 train / 540 test, seed 0). The train
images are written as PNGs to a temporary folder and pretrained on with ``recipes/byol_digits.yaml`` (BYOL's image
augmentations at 16 px, small CNN 16-32-64) and ``--method.name`` = each method. Probe: the full image resized to
16 px (bicubic, as the views' crops), normalized like the views, logistic regression on standardized embeddings.

Audio: BYOL-A v2 (``byola_v2``, method ``byola``) and TriBYOL (``tribyola``) with a small AudioNTT2020 (16 conv
channels, d 256), at batch sizes 16 and 64, the same number of steps each, pretrained on an unlabeled corpus
(default: ``berklee_unlabeled``, the pretraining set of ../shared/data) and probed on an evaluation task (default:
``esc50_f4``, 4 folds grouped by source recording: mean accuracy of leave-one-fold-out logistic regressions on the
first ``unit_sec`` of each clip). ``--audio_corpus train-split`` pretrains on the task's own train clips instead
(docs/variants.md's FSDD runs). Each run is compared with the weights it started from (the random init of its
seed), over several seeds: the random encoder's probe accuracy varies by several points across seeds.

    PYTHONPATH=. python benchmarks/variants_table.py [--part images|audio|all] [--seeds 0,1] [--steps 300] \\
        [--data ../shared/data] [--audio_task esc50_f4] [--audio_corpus berklee_unlabeled]

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
from byola.engine.methods import get_method, method_spec_overrides
from byola.models import build_encoder
from byola.evaluation.run import crop_or_pad
from byola.evaluation.tasks import Task, TaskError, load_task
from byola.pretrain import pretrain
from byola.recipe import resolve_config
from _data import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
SAMPLE_RATE = 16000  # the byola_v2/tribyola recipes' rate


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
    header = ("| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean | random init, same arch (mean) "
              "| seeds above random init (BatchNorm, same arch) | ")
    print(header + f"loss first→last (seed {seeds[0]}) | s/run |\n|---|" + "---|" * (len(seeds) + 5))
    frontend = {"size": [cfg["augment"]["size"]] * 2, "mean": cfg["augment"]["mean"], "std": cfg["augment"]["std"]}
    y_tr, y_te = digits.target[idx_tr], digits.target[idx_te]

    def random_init(spec_name: str) -> list[float]:
        """Probe accuracy of the untrained encoder with the method's backbone (BN-free methods change it)."""
        spec, out = get_method(spec_name, **method_spec_overrides(cfg["method"])), []
        for seed in seeds:
            torch.manual_seed(seed)
            mcfg = dict(cfg["model"])
            enc = build_encoder(mcfg.pop("name"), **spec.backbone_options(), **mcfg)
            out.append(probe(embed_images(enc, images[idx_tr], frontend), y_tr,
                             embed_images(enc, images[idx_te], frontend), y_te))
        return out

    base = random_init("byol")
    print(f"| random init | {' | '.join(f'{a:.4f}' for a in base)} | {np.mean(base):.4f} | | | | |", flush=True)
    for name in methods:
        spec = get_method(name, **method_spec_overrides(cfg["method"]))
        same_arch = random_init(name) if spec.backbone_norm or spec.weight_standardization else base
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
        above = f"{np.sum(np.greater(accs, base))}/{len(seeds)}, {np.sum(np.greater(accs, same_arch))}/{len(seeds)}"
        label = f"{name} (ablation)" if spec.description.startswith("ablation") else name
        print(f"| {label} | {' | '.join(f'{a:.4f}' for a in accs)} | {np.mean(accs):.4f} | {np.mean(same_arch):.4f} | "
              f"{above} | "
              f"{losses[0]:.3f} → {losses[1]:.3f} | {seconds:.0f} |", flush=True)


# -------------------------------------------------------------------------------------------------------- audio
def task_waves(task: Task) -> torch.Tensor:
    """Every clip of ``task`` at 16 kHz, its first ``unit_sec`` seconds (zero-padded at the end): the evaluation
    suite's crop of test clips, here for every clip (no random training crops)."""
    n = int(round(SAMPLE_RATE * task.unit_sec))
    return torch.stack([crop_or_pad(load_audio(f, SAMPLE_RATE), n, None) for f in task.files])


def task_probe(task: Task, x: np.ndarray) -> float:
    """Mean test accuracy over the task's folds (split tasks: one), training on train + valid."""
    y = task.targets()
    accs = [probe(x[np.r_[f.train, f.valid]], y[np.r_[f.train, f.valid]], x[f.test], y[f.test])
            for f in task.folds()]
    return float(np.mean(accs))


@torch.no_grad()
def embed_waves(embedder: torch.nn.Module, waves: torch.Tensor, batch: int = 64) -> np.ndarray:
    return torch.cat([embedder.embed_batch(waves[i:i + batch]) for i in range(0, len(waves), batch)]).numpy()


def audio_corpus(args: argparse.Namespace, task: Task, work: Path) -> Path | None:
    """The pretraining data: a folder under ``--data`` (or any path), or ``train-split``: the task's own train-split
    clips (no labels used)."""
    if args.audio_corpus != "train-split":
        path = Path(args.data) / args.audio_corpus
        path = path if path.exists() else Path(args.audio_corpus)
        return path if path.exists() else None
    if task.split is None:
        raise SystemExit(f"--audio_corpus train-split needs a task with a train split; {task.name} has folds")
    listing = work / f"{task.name}_train.txt"
    listing.write_text("\n".join(str(f.resolve()) for f, s in zip(task.files, task.split) if s == "train"))
    return listing


def audio_table(args: argparse.Namespace, work: Path) -> None:
    try:
        task = load_task(args.audio_task, data_root=args.data)
    except TaskError as e:
        print(f"\n## Audio: skipped ({e})")
        return
    corpus = audio_corpus(args, task, work)
    if corpus is None:
        print(f"\n## Audio: skipped (pretraining data {args.audio_corpus!r} not found under {args.data})")
        return
    waves = task_waves(task)
    small = {"model.name": "AudioNTT2020", "model.d": 256, "model.conv_channels": 16,
             "method.projector_hidden": 1024, "method.projector_dim": 128, "method.predictor_hidden": 1024,
             "norm.max_samples": 1000, "augment.bank_size": 512, "data.num_workers": 0,
             "data.cache_dir": str(work / "decoded"), "train.steps": args.audio_steps, "train.progress": False,
             "train.checkpoint_every": 100000, "optim.lr": 3e-4}
    seeds = [int(s) for s in args.audio_seeds.split(",")]
    n_folds = len(task.folds())
    print(f"\n## Audio: pretrained on {corpus.name}, probed on {task.name} ({len(task)} clips of {task.unit_sec:g} s, "
          f"{n_folds} fold{'s' if n_folds > 1 else ''}), AudioNTT2020 conv 16 d 256, heads 1024/128, Adam 3e-4, "
          f"{args.audio_steps} steps, seeds {seeds}")
    print("Each run is paired with its own starting point: the random init of the same seed (the weights the run "
          "started from), probed with the same frontend and normalization statistics.")
    print("| method (recipe) | batch | trained, per seed | random init, per seed | trained mean | random mean "
          "| paired gain over random (mean, min) | loss first→last (seed 0) | s/run |")
    print("|---|---|---|---|---|---|---|---|---|")
    for recipe, label in (("byola_v2", "BYOL (byola_v2, byola)"), ("tribyola", "TriBYOL (tribyola)")):
        for batch in (int(b) for b in args.audio_batches.split(",")):
            accs, rnds, seconds, losses = [], [], 0.0, None
            for seed in seeds:
                run = work / f"audio-{recipe}-{batch}-{seed}"
                t0 = time.perf_counter()
                model = pretrain([str(corpus)], str(RECIPES / f"{recipe}.yaml"), str(run),
                                 **{**small, "train.batch_size": batch, "seed": seed})
                seconds += time.perf_counter() - t0
                accs.append(task_probe(task, embed_waves(load(model), waves)))
                # pretrain seeds the model with `seed`: this is the run's own initial encoder
                rnds.append(task_probe(task, embed_waves(load(model, random_init=seed), waves)))
                losses = losses or final_loss(run)
            gains = np.subtract(accs, rnds)
            print(f"| {label} | {batch} | {' '.join(f'{a:.4f}' for a in accs)} | {' '.join(f'{a:.4f}' for a in rnds)} "
                  f"| {np.mean(accs):.4f} | {np.mean(rnds):.4f} | {gains.mean():+.4f}, {gains.min():+.4f} "
                  f"| {losses[0]:.3f} → {losses[1]:.3f} | {seconds / len(seeds):.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=("images", "audio", "all"), default="all")
    parser.add_argument("--data", default=str(SHARED_DATA), help="folder holding the tasks' CSVs and the corpus")
    parser.add_argument("--audio_task", default="esc50_f4", help="evaluation task (name or CSV) of the audio probe")
    parser.add_argument("--audio_corpus", default="berklee_unlabeled",
                        help="audio pretraining data: a folder under --data, a path, or train-split (the task's)")
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
