"""Tiny modality-free stand-ins for trainer tests (a BYOL-shaped toy engine, a stateful view maker and a dataset),
plus a command line so tests can run the trainer in subprocesses (SIGKILL/resume, torchrun).

    python tests/trainer_toy.py RUN_DIR --steps 12 --checkpoint-every 4 [--resume] [--hang-after N] [--weights F]
        [--engine byol] [--views fixed] [--sync-bn] [--hang-rank R]
"""
from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

DIM = 8
ROOT = Path(__file__).resolve().parents[1]


def subprocess_env() -> dict[str, str]:
    """The environment for running this file (or torchrun on it) in a subprocess: byola importable from the
    checkout, one torch thread per process."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


class ToyBYOL(nn.Module):
    """Online encoder+projector (with BatchNorm) and predictor; EMA target; symmetric 2 - 2 cos loss."""

    def __init__(self, tau: float = 0.9, nan_at: int | None = None) -> None:
        super().__init__()
        self.online = nn.Sequential(nn.Linear(DIM, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8))
        self.predictor = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self.tau = tau
        self.nan_at = nan_at
        self.calls = 0

    def forward(self, views: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        self.calls += 1
        a, b = views
        p = self.predictor(self.online(torch.cat([a, b])))
        with torch.no_grad():
            z = self.target(torch.cat([b, a]))
        loss = (2 - 2 * F.cosine_similarity(p, z, dim=-1)).mean() * 2
        if self.nan_at is not None and self.calls >= self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss, "pred_std": p.detach().std()}

    @torch.no_grad()
    def update_targets(self, step: int, total_steps: int) -> float:
        for t, o in zip(self.target.parameters(), self.online.parameters()):
            t.mul_(self.tau).add_(o.detach(), alpha=1 - self.tau)
        return self.tau


class ToyViews(nn.Module):
    """Two noisy views mixed with a FIFO memory bank (a buffer) using its own generator; reports batch stats."""

    def __init__(self, seed: int = 0, bank_size: int = 16) -> None:
        super().__init__()
        self.generator = torch.Generator().manual_seed(seed)
        self.register_buffer("bank", torch.zeros(bank_size, DIM))

    def forward(self, x: torch.Tensor):
        views = []
        for _ in range(2):
            # drawn on the generator's device (CPU), then moved: the same draws on every device
            idx = torch.randint(len(self.bank), (len(x),), generator=self.generator).to(x.device)
            noise = torch.randn(x.shape, generator=self.generator).to(x.device) * 0.1
            views.append(0.8 * x + 0.2 * self.bank[idx] + noise + 0.01 * torch.randn_like(x))  # global RNG too
        self.bank = torch.cat([self.bank[len(x):], x])
        return views, {"mean_before": x.mean(), "std_before": x.std()}


def fixed_views(x: torch.Tensor) -> list[torch.Tensor]:
    """Two views that are a pure function of each sample (no randomness, no batch coupling): with them, P processes
    with batch B see exactly the samples and views of one process with batch P * B."""
    return [x, 0.5 * x.flip(-1) + 0.1]


def byol_engine() -> nn.Module:
    """byola's own BYOL engine on a tiny encoder, BatchNorm in encoder, projector and predictor."""
    from byola.engine.methods import build_method

    encoder = nn.Sequential(nn.Linear(DIM, 16), nn.BatchNorm1d(16), nn.ReLU())
    return build_method("byol", encoder, 16, projector_hidden=16, projector_dim=8, predictor_hidden=16)


class ToyData(torch.utils.data.Dataset):
    """Fixed vectors plus per-(seed, epoch, index) jitter, like random crops."""

    def __init__(self, n: int = 40, seed: int = 0) -> None:
        self.base = torch.from_numpy(np.random.default_rng(123).standard_normal((n, DIM)).astype(np.float32))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        return self.base[i] + torch.from_numpy(rng.standard_normal(DIM).astype(np.float32)) * 0.1


def run(run_dir: str | Path, steps: int = 12, checkpoint_every: int = 4, batch_size: int = 4, workers: int = 0,
        resume: bool = False, hang_after: int | None = None, device: str | None = None, engine: str = "toy",
        views: str = "toy", sync_bn: bool = False, hang_rank: int = 0, optim: str = "adam") -> nn.Module:
    """Train the toy in deterministic mode (as a test would in a fresh process) and return the model."""
    from byola.engine.distributed import dist_info
    from byola.engine.trainer import Trainer

    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(0)
        model = ToyBYOL() if engine == "toy" else byol_engine()
        rank = dist_info().rank
        run_dir = Path(run_dir)

        def export(step: int, final: bool) -> None:
            (run_dir / f"export-rank{dist_info().rank}-step{step}").write_text(str(final))

        def on_step(step: int, row: dict) -> None:
            if hang_after is not None and step == hang_after and rank == hang_rank:
                (run_dir / "hanging").write_text(str(os.getpid()))
                time.sleep(600)

        make_views = ToyViews(seed=rank) if views == "toy" else fixed_views
        optimizer = (lambda p: torch.optim.Adam(p, lr=1e-2)) if optim == "adam" else (
            lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
        trainer = Trainer(model, optimizer, ToyData(), make_views, run_dir,
                          batch_size=batch_size, steps=steps, checkpoint_every=checkpoint_every, warmup_steps=2,
                          num_workers=workers, export=export, on_step=on_step, progress=False, device=device,
                          sync_bn=sync_bn)
        trainer.fit(resume=resume)
        return model
    finally:
        torch.use_deterministic_algorithms(deterministic)


def main() -> None:
    from byola.engine.distributed import dist_info

    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--checkpoint-every", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--hang-after", type=int, default=None)
    ap.add_argument("--weights", default=None, help="save the final state_dict here ({rank} is replaced)")
    ap.add_argument("--device", default=None, help="Trainer device (default: cuda:LOCAL_RANK when available)")
    ap.add_argument("--engine", choices=("toy", "byol"), default="toy", help="ToyBYOL or byola's BYOL engine")
    ap.add_argument("--views", choices=("toy", "fixed"), default="toy", help="ToyViews or fixed_views")
    ap.add_argument("--sync-bn", action="store_true")
    ap.add_argument("--optim", choices=("adam", "sgd"), default="adam",
                    help="Adam 1e-2, or SGD 0.1 with momentum 0.9 (no per-element normalization of rounding noise)")
    ap.add_argument("--hang-rank", type=int, default=0, help="the rank that hangs after --hang-after steps")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = run(args.run_dir, args.steps, args.checkpoint_every, args.batch_size, args.workers, args.resume,
                args.hang_after, args.device, args.engine, args.views, args.sync_bn, args.hang_rank, args.optim)
    if args.weights:
        torch.save(model.state_dict(), args.weights.format(rank=dist_info().rank))


if __name__ == "__main__":
    main()
