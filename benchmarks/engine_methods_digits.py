"""Sanity benchmark of every registered engine method on real images: scikit-learn's 8×8 digits.

Each method pretrains the same tiny conv encoder (seeded, identical init) for a fixed number of steps with
simple batched augmentations written here (random affine shift/scale/rotation, pixel noise, cutout), then a
logistic-regression probe on the frozen embeddings is scored on a held-out split, next to the randomly
initialized encoder. This checks the engine (losses, targets, predictors), not an image recipe: the real
image pipeline lives in byola.augment.

    PYTHONPATH=. python benchmarks/engine_methods_digits.py [--steps 300] [--methods byol,tribyol]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from byola.engine import METHODS, build_method

EMBED = 32


def make_encoder() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, EMBED),
    )


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Batched: random rotation ±15°, scale 0.85–1.15, shift ±1.5 px, cutout 3×3 (p 0.5), noise σ 0.1."""
    b = x.shape[0]
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(b, generator=g)  # noqa: E731
    angle, scale = u(-math.pi / 12, math.pi / 12), u(0.85, 1.15)
    tx, ty = u(-1.5, 1.5) * 2 / 8, u(-1.5, 1.5) * 2 / 8
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    out = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    cy, cx = torch.randint(0, 6, (b,), generator=g), torch.randint(0, 6, (b,), generator=g)
    rows, cols = torch.arange(8).view(1, 8, 1), torch.arange(8).view(1, 1, 8)
    hole = ((rows >= cy.view(-1, 1, 1)) & (rows < cy.view(-1, 1, 1) + 3)
            & (cols >= cx.view(-1, 1, 1)) & (cols < cx.view(-1, 1, 1) + 3))
    hole &= (torch.rand(b, generator=g) < 0.5).view(-1, 1, 1)
    out = out.masked_fill(hole.unsqueeze(1), 0.0)
    return out + 0.1 * torch.randn(out.shape, generator=g)


@torch.no_grad()
def embed(encoder: nn.Module, x: torch.Tensor) -> np.ndarray:
    encoder.eval()
    return encoder(x).numpy()


def probe(encoder: nn.Module, x_tr, y_tr, x_te, y_te) -> float:
    scaler = StandardScaler().fit(embed(encoder, x_tr))
    clf = LogisticRegression(max_iter=2000).fit(scaler.transform(embed(encoder, x_tr)), y_tr)
    return float(clf.score(scaler.transform(embed(encoder, x_te)), y_te))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = digits.target
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.3, random_state=0, stratify=y)
    x_tr, x_te = (x[idx_tr] - 0.3) / 0.4, (x[idx_te] - 0.3) / 0.4
    y_tr, y_te = y[idx_tr], y[idx_te]

    torch.manual_seed(args.seed)
    random_acc = probe(make_encoder(), x_tr, y_tr, x_te, y_te)
    print(f"digits: {len(idx_tr)} train / {len(idx_te)} test, steps {args.steps}, batch {args.batch}, "
          f"lr {args.lr}, encoder conv 16-32 → {EMBED}, torch threads {torch.get_num_threads()}")
    print(f"{'method':<20} {'probe acc':>9} {'vs random':>9} {'loss first→last':>18} {'s':>6}")
    print(f"{'random init':<20} {random_acc:>9.4f} {'':>9} {'':>18} {'':>6}")
    for name in args.methods.split(","):
        torch.manual_seed(args.seed)
        encoder = make_encoder()
        model = build_method(name, encoder, EMBED, projector_hidden=256, projector_dim=64, predictor_hidden=256)
        opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=1e-4)
        g = torch.Generator().manual_seed(args.seed)
        augs = METHODS[name].view_augmentations
        losses, t0 = [], time.perf_counter()
        model.train()
        for step in range(args.steps):
            batch = x_tr[torch.randint(0, len(x_tr), (args.batch,), generator=g)]
            out = model([augment(batch, g) for _ in augs])
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            model.update_targets(step, args.steps)
            losses.append(out["loss"].item())
        seconds = time.perf_counter() - t0
        acc = probe(model.encoder, x_tr, y_tr, x_te, y_te)
        first, last = np.mean(losses[:10]), np.mean(losses[-10:])
        print(f"{name:<20} {acc:>9.4f} {acc - random_acc:>+9.4f} {first:>8.3f} → {last:<7.3f} {seconds:>6.1f}",
              flush=True)


if __name__ == "__main__":
    main()
