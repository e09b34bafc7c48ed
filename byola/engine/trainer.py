"""The one training loop of byola, shared by every modality and method (modality-free: no audio/image imports).

:class:`Trainer` runs an engine module (e.g. :class:`byola.engine.byol.BYOL`: ``forward(views) -> {"loss": ...}``,
``update_targets(step, total_steps)``) on batches from a dataset, with the views made on the device by a
modality-specific ``make_views`` callable. It handles mixed precision, gradient accumulation, DDP through ``torchrun``,
the learning-rate schedule, a progress bar, a CSV log, NaN detection, atomic checkpoints and exact resume.

Determinism and resume. The data order is a pure function of ``(seed, epoch)``: every epoch is a permutation drawn from
``numpy.random.default_rng([seed, epoch])``, cut into ``world_size * batch_size`` blocks (the tail that does not fill a
block is dropped), and rank ``r`` takes the ``r``-th slice of every block (the sharding of
``DistributedSampler(drop_last=True)``, which cannot start in the middle of an epoch). The loader is one infinite stream
of micro-batches over all epochs, indexed by a global micro-batch counter, so a resumed run restarts the stream exactly
at the first batch not yet consumed. Items are fetched as ``dataset[index]`` after ``dataset.set_epoch(epoch)`` (when
the dataset has it) inside the worker, so per-item randomness (e.g. crop offsets) can be derived from ``(seed, epoch,
index)`` and is independent of worker count and scheduling. Everything else that is random lives in the training process
and is checkpointed: python/numpy/torch (CPU and CUDA) RNG states, every ``torch.Generator`` held by ``make_views`` (or
its submodules), and ``make_views.state_dict()`` (e.g. a Mixup memory bank); with DDP these are gathered from every rank
into rank 0's checkpoint.

Files in ``run_dir`` (written by rank 0 only): ``log.csv`` (one row per optimizer step; with ``tensorboard=True`` the
same values also go to ``tensorboard/`` as TensorBoard scalars, one tag per column), ``checkpoints/state-<step>.pt``
(training state, ``torch.save`` through ``byola.files.atomic_writer``; the newest ``keep_checkpoints`` are kept). The
model a user embeds with is written by the ``export(step, final)`` callback the modality side provides, called on
rank 0 after each training-state checkpoint.
"""
from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from byola.engine.distributed import default_device, dist_info, process_group
from byola.engine.sync_bn import convert_sync_batchnorm
from byola.extras import optional_module
from byola.files import atomic_writer
from byola.precision import resolve_precision

# The `tensorboard` extra: torch.utils.tensorboard imports the tensorboard package (optional TensorBoard logging).
_tensorboard = optional_module("torch.utils.tensorboard", "tensorboard")

__all__ = ["Trainer", "LR_SCHEDULES", "AMP_MODES", "WarmupCosine", "atomic_save", "latest_checkpoint",
           "resume_checkpoint", "checkpoint_step", "require_tensorboard"]

LR_SCHEDULES = ("cosine", "constant")
AMP_MODES = ("auto", "bf16", "fp16", "off")
STATE_FORMAT = "byola-train-state"
STATE_VERSION = 1
_STATE_RE = re.compile(r"^state-(\d+)\.pt$")
_BASE_COLUMNS = ("step", "epoch", "loss", "tau", "lr", "data_wait_s", "views_s", "step_s")
TENSORBOARD_DIR = "tensorboard"
_RUN_LOGS = ("log.csv", f"{TENSORBOARD_DIR}/events.out.tfevents.*")  # what a run writes from its first step


def require_tensorboard() -> type:
    """``torch.utils.tensorboard.SummaryWriter``; raises :class:`byola.errors.UsageError` naming the extra to
    install (``pip install 'byola[tensorboard]'``) when tensorboard is missing."""
    return _tensorboard.SummaryWriter


# ------------------------------------------------------------------------------------------------------- file helpers
def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through :func:`byola.files.atomic_writer` (the folder is made if needed): readers see the old
    file or the complete new one, never a partial file, even if the process is killed mid-write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_writer(path, "wb") as f:
        torch.save(obj, f)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The training-state checkpoint of ``run_dir`` with the highest step, or None."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STATE_RE.match(p.name))]
    return max(found)[1] if found else None


def resume_checkpoint(run_dir: str | os.PathLike, resume: bool, trained: Sequence[str] = ()) -> Path | None:
    """The one answer to "does a run already exist in ``run_dir``": the training-state checkpoint a run continues
    from (the newest, with ``resume``; None for a run from step 0). Raises ``FileExistsError`` (one line naming what
    is there and what to do) rather than let a run overwrite an earlier one: without ``resume``, when ``run_dir``
    holds checkpoints or, without checkpoints, a run's log (``log.csv``, TensorBoard events: a run killed before its
    first checkpoint, or one whose checkpoints were removed) or files matching the ``trained`` patterns (the caller's
    exported weights); with ``resume`` and no checkpoint, when it holds ``trained`` files (a run from step 0 would
    overwrite them)."""
    run_dir = Path(run_dir)
    latest = latest_checkpoint(run_dir)
    if latest is not None:
        if not resume:
            raise FileExistsError(f"{run_dir} holds a run: pass resume=True (--resume) to continue it, or choose "
                                  "another folder (--out)")
        return latest
    found = _matching(run_dir, trained if resume else (*_RUN_LOGS, *trained))
    if found:
        shown = ", ".join(found[:4]) + (f" and {len(found) - 4} more" if len(found) > 4 else "")
        raise FileExistsError(f"{run_dir} holds an earlier run's {shown} but no checkpoint to continue from: choose "
                              "another folder (--out), or remove them to start a new run there")
    return None


def _matching(folder: Path, patterns: Sequence[str]) -> list[str]:
    """The files of ``folder`` matching the glob ``patterns`` (relative paths, sorted)."""
    return sorted({p.relative_to(folder).as_posix() for pattern in patterns for p in folder.glob(pattern)})


def checkpoint_step(path: str | os.PathLike) -> int:
    """The optimizer step of a training-state checkpoint, from its name (``state-<step>.pt``)."""
    match = _STATE_RE.match(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not named like a training-state checkpoint (state-<step>.pt)")
    return int(match.group(1))


# ---------------------------------------------------------------------------------------------------- lr schedules
class WarmupCosine:
    """Learning-rate multiplier: linear warm-up from ``1/(warmup+1)`` to 1 over ``warmup_steps``, then a cosine decay
    to ``min_ratio`` at ``total_steps`` (``cosine=True``) or constant 1 (``cosine=False``). A plain object (not a
    closure) so that ``LambdaLR.state_dict()`` stores it."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, cosine: bool = True, min_ratio: float = 0.0) -> None:
        if warmup_steps < 0 or total_steps < 1:
            raise ValueError(f"need total_steps >= 1 and warmup_steps >= 0, got {total_steps}, {warmup_steps}")
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.cosine = bool(cosine)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if not self.cosine:
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_ratio + (1.0 - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ------------------------------------------------------------------------------------------------------- data order
class _EpochItems(Dataset):
    """Wraps a dataset so that items are requested as ``(epoch, index)``: the epoch reaches the worker with each item
    (``set_epoch`` is called there), which keeps per-item randomness a function of (seed, epoch, index) with
    persistent workers and across resume."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._set_epoch = getattr(dataset, "set_epoch", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        if self._set_epoch is not None:
            self._set_epoch(epoch)
        return self.dataset[index]


class _BatchStream(Sampler):
    """Infinite-over-epochs batch sampler, starting at global micro-batch ``start`` and stopping at ``stop``."""

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int, world_size: int, start: int,
                 stop: int) -> None:
        self.n_items, self.batch_size, self.seed = n_items, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_epoch = n_items // (batch_size * world_size)
        if self.per_epoch == 0:
            raise ValueError(f"the dataset has {n_items} items, fewer than one batch of {batch_size} "
                             f"x {world_size} process(es)")
        self.start, self.stop = start, stop

    def epoch_indices(self, epoch: int) -> np.ndarray:
        """This rank's item indices of ``epoch``, in order ([per_epoch * batch_size])."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        block = self.batch_size * self.world_size
        order = order[: self.per_epoch * block].reshape(self.per_epoch, self.world_size, self.batch_size)
        return order[:, self.rank].reshape(-1)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, cached = -1, None
        for b in range(self.start, self.stop):
            e, i = divmod(b, self.per_epoch)
            if e != epoch:
                epoch, cached = e, self.epoch_indices(e)
            yield [(e, int(k)) for k in cached[i * self.batch_size:(i + 1) * self.batch_size]]


def _to_device(batch: Any, device: torch.device, non_blocking: bool) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, (list, tuple)):
        moved = [_to_device(b, device, non_blocking) for b in batch]
        return type(batch)(moved) if isinstance(batch, list) else tuple(moved)
    if isinstance(batch, dict):
        return {k: _to_device(v, device, non_blocking) for k, v in batch.items()}
    return batch


# ------------------------------------------------------------------------------------------------------- RNG state
def _generators(obj: Any) -> dict[str, torch.Generator]:
    """Every distinct ``torch.Generator`` attribute of ``obj`` and its submodules, by attribute path."""
    found: dict[str, torch.Generator] = {}
    seen: set[int] = set()
    modules = obj.named_modules() if isinstance(obj, nn.Module) else [("", obj)]
    for prefix, module in modules:
        for name, value in sorted(vars(module).items()):
            if isinstance(value, torch.Generator) and id(value) not in seen:
                seen.add(id(value))
                found[f"{prefix}.{name}" if prefix else name] = value
    return found


def _rng_state(make_views: Any) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        # numpy's state as plain types + a tensor, so the checkpoint loads with weights_only=True.
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
        "generators": {k: g.get_state() for k, g in _generators(make_views).items()},
    }
    return state


def _set_rng_state(state: dict[str, Any], make_views: Any) -> None:
    random.setstate(_to_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gens = _generators(make_views)
    if set(gens) != set(state["generators"]):
        raise ValueError(f"make_views holds generators {sorted(gens)}, the checkpoint {sorted(state['generators'])}")
    for k, g in gens.items():
        g.set_state(state["generators"][k])


def _to_tuple(x: Any) -> Any:
    return tuple(_to_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Trains ``model`` (an engine module: ``forward(views) -> {"loss": Tensor, ...}``, optional
    ``update_targets(step, total_steps)``, called after each optimizer step with the 0-based step; the value it
    returns is logged as ``tau``) on ``dataset``.

    Each optimizer step consumes ``accum_steps`` micro-batches of ``batch_size`` items per process;
    ``make_views(batch)`` turns a collated micro-batch (already on the device) into the views: it returns
    ``list[Tensor]`` or ``(list[Tensor], {name: scalar})``, the scalars being logged. It runs under ``torch.no_grad()``
    and outside autocast (augmentation in float32); the engine's forward runs under autocast. If ``make_views`` is an
    ``nn.Module`` its ``state_dict`` (e.g. a memory bank) and any ``torch.Generator`` attributes are checkpointed.

    Args:
        model: the engine module. Its trainable parameters go to the optimizer: as the parameter groups of
            ``model.parameter_groups()`` when it has that method (a group's optional ``lr_scale`` multiplies the
            optimizer's learning rate for that group, e.g. a faster predictor), else as one group.
        optimizer: ``factory(params) -> Optimizer`` (called after the model is on its device) or an optimizer.
        dataset: map-style dataset (``set_epoch(epoch)`` is called, in the worker, before each item when present).
        make_views: the modality's batched augmentation, see above.
        run_dir: folder for the CSV log and checkpoints.
        batch_size: items per micro-batch per process.
        epochs / steps: run length, exactly one of them: ``steps`` optimizer steps, or ``epochs`` passes over the
            data (``epochs * batches_per_epoch // accum_steps`` steps).
        seed: seeds the data order, and python/numpy/torch RNGs (``seed + rank``) at the start of a fresh run.
        lr_schedule: ``"cosine"`` (after warm-up, to ``min_lr_ratio``) or ``"constant"``.
        warmup_steps: linear warm-up length in optimizer steps.
        accum_steps: micro-batches per optimizer step (the loss is divided by it; DDP syncs on the last one only).
        amp: ``"auto"`` (bf16 on CUDA when supported, else fp16; on a CPU bf16 only where it is native, i.e.
            avx512_bf16/AMX, else off: see byola.precision), ``"bf16"``, ``"fp16"`` (CUDA only, with a GradScaler)
            or ``"off"``.
        grad_clip: max global gradient norm, or None.
        checkpoint_every: optimizer steps between checkpoints (and exports); one is always written at the end.
        keep_checkpoints: how many training-state files to keep.
        export: ``export(step, final)`` called on rank 0 after each checkpoint (e.g. writes the embeddable model).
        on_step: ``on_step(step, row)`` called on every rank after each step with the logged values.
        num_workers, collate_fn, pin_memory, prefetch_factor: DataLoader settings.
        device: defaults to ``cuda:LOCAL_RANK`` when CUDA is available, else CPU.
        progress: show a tqdm bar (rank 0).
        tensorboard: also write every ``log.csv`` value of every step as a TensorBoard scalar (tag = column name,
            global step = ``step``) to ``run_dir/tensorboard`` (rank 0); needs the ``tensorboard`` extra. A resumed
            run purges the events after its checkpoint's step, as it drops those rows of ``log.csv``.
        sync_timing: synchronize CUDA around ``make_views`` so that ``views_s`` is exact (costs a little speed).
        find_unused_parameters: passed to DistributedDataParallel.
        sync_bn: with more than one process, convert every BatchNorm layer of ``model`` (encoder, projector,
            predictor, targets) to synchronized BatchNorm (:func:`byola.engine.sync_bn.convert_sync_batchnorm`:
            torch's ``SyncBatchNorm`` on CUDA, ``PortableSyncBatchNorm`` on CPU) before wrapping it in DDP, so batch
            statistics (and their gradients) span the global batch: ``P`` processes with ``batch_size`` B train like
            one process with ``P * B``. No effect on one process.
    """

    def __init__(self, model: nn.Module,
                 optimizer: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | torch.optim.Optimizer,
                 dataset: Dataset, make_views: Callable[[Any], Any], run_dir: str | os.PathLike,
                 *, batch_size: int, epochs: int | None = None, steps: int | None = None, seed: int = 0,
                 lr_schedule: str = "cosine", warmup_steps: int = 0, min_lr_ratio: float = 0.0, accum_steps: int = 1,
                 amp: str = "auto", grad_clip: float | None = None, checkpoint_every: int = 1000,
                 keep_checkpoints: int = 2, export: Callable[[int, bool], None] | None = None,
                 on_step: Callable[[int, dict[str, float]], None] | None = None, num_workers: int = 0,
                 collate_fn: Callable | None = None, pin_memory: bool | None = None, prefetch_factor: int | None = None,
                 device: str | torch.device | None = None, progress: bool = True, sync_timing: bool = False,
                 find_unused_parameters: bool = False, sync_bn: bool = False, tensorboard: bool = False) -> None:
        if (epochs is None) == (steps is None):
            raise ValueError("give exactly one of epochs= or steps=")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
        for name, value in (("batch_size", batch_size), ("accum_steps", accum_steps),
                            ("checkpoint_every", checkpoint_every), ("keep_checkpoints", keep_checkpoints)):
            if int(value) < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.model, self.dataset, self.make_views = model, dataset, make_views
        self.run_dir = Path(run_dir)
        self.batch_size, self.accum_steps, self.seed = int(batch_size), int(accum_steps), int(seed)
        self.lr_schedule, self.warmup_steps, self.min_lr_ratio = lr_schedule, int(warmup_steps), float(min_lr_ratio)
        self.grad_clip = grad_clip
        self.checkpoint_every, self.keep_checkpoints = int(checkpoint_every), int(keep_checkpoints)
        self.export, self.on_step = export, on_step
        self.num_workers, self.collate_fn = int(num_workers), collate_fn
        self.prefetch_factor = prefetch_factor
        self.progress, self.sync_timing = progress, sync_timing
        self.find_unused_parameters = find_unused_parameters
        self.sync_bn = bool(sync_bn)
        self._summary_writer = require_tensorboard() if tensorboard else None  # a missing extra fails here
        self._tb: Any = None
        self._optimizer_arg = optimizer
        self._epochs, self._steps = epochs, steps

        self.dist = dist_info()
        self.device = default_device() if device is None else torch.device(device)
        self.pin_memory = self.device.type == "cuda" if pin_memory is None else pin_memory
        self.amp_dtype = self._amp_dtype(amp)

        n_items = len(dataset)  # type: ignore[arg-type]
        self.batches_per_epoch = n_items // (self.batch_size * self.dist.world_size)
        if self.batches_per_epoch == 0:
            raise ValueError(f"the dataset has {n_items} items, fewer than one batch of {self.batch_size} "
                             f"x {self.dist.world_size} process(es)")
        self.total_steps = int(steps) if steps is not None else int(epochs) * self.batches_per_epoch // self.accum_steps
        if self.total_steps < 1:
            raise ValueError(f"the run has no optimizer step ({epochs} epoch(s) of {self.batches_per_epoch} batches, "
                             f"accum_steps={self.accum_steps})")
        self.step = 0

    # ------------------------------------------------------------------------------------------------ setup helpers
    def _amp_dtype(self, amp: str) -> torch.dtype | None:
        cuda = self.device.type == "cuda"
        if amp == "off":
            return None
        if amp == "auto" and cuda:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if amp in ("auto", "bf16"):  # on a CPU: auto is bf16 only where native, bf16 warns where emulated
            dtype = resolve_precision(amp, self.device)
            return None if dtype == torch.float32 else dtype
        if not cuda:
            raise ValueError("amp='fp16' needs CUDA (use 'bf16' or 'off' on CPU)")
        return torch.float16

    def _config(self) -> dict[str, Any]:
        """Settings a resumed run must share with the interrupted one (they fix the data order and the schedule)."""
        return {"seed": self.seed, "batch_size": self.batch_size, "accum_steps": self.accum_steps,
                "world_size": self.dist.world_size, "dataset_len": len(self.dataset),  # type: ignore[arg-type]
                "total_steps": self.total_steps}

    def _loader(self, start_batch: int) -> DataLoader:
        stream = _BatchStream(len(self.dataset), self.batch_size, self.seed, self.dist.rank,  # type: ignore[arg-type]
                              self.dist.world_size, start_batch, self.total_steps * self.accum_steps)
        kwargs: dict[str, Any] = {}
        if self.num_workers > 0:
            kwargs["persistent_workers"] = False
            if self.prefetch_factor is not None:
                kwargs["prefetch_factor"] = self.prefetch_factor
        # A private generator: creating the loader must not consume the global torch RNG (resume exactness).
        return DataLoader(_EpochItems(self.dataset), batch_sampler=stream, num_workers=self.num_workers,
                          collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                          generator=torch.Generator().manual_seed(self.seed), **kwargs)

    # -------------------------------------------------------------------------------------------------- checkpoints
    def _gather(self, obj: Any) -> list[Any] | None:
        """``obj`` of every rank on rank 0 (None elsewhere)."""
        if self.dist.world_size == 1:
            return [obj]
        out = [None] * self.dist.world_size if self.dist.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def _rank_state(self) -> dict[str, Any]:
        views_state = self.make_views.state_dict() if isinstance(self.make_views, nn.Module) else {}
        views_state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v for k, v in views_state.items()}
        return {"rng": _rng_state(self.make_views), "make_views": views_state}

    def _save(self, final: bool) -> None:
        ranks = self._gather(self._rank_state())
        if self.dist.is_main:
            state = {"format": STATE_FORMAT, "version": STATE_VERSION, "step": self.step, "config": self._config(),
                     "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "ranks": ranks}
            folder = self.run_dir / "checkpoints"
            atomic_save(state, folder / f"state-{self.step:08d}.pt")
            old = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := _STATE_RE.match(p.name)))
            for _, p in old[:-self.keep_checkpoints]:
                p.unlink()
            if self._tb is not None:
                self._tb.flush()  # TensorBoard's events as far as this checkpoint's
            if self.export is not None:
                self.export(self.step, final)
        if self.dist.world_size > 1:
            dist.barrier()

    def _load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT or state.get("version") != STATE_VERSION:
            raise ValueError(f"{path} is not a byola training-state checkpoint (version {STATE_VERSION})")
        then = state["config"]
        mismatch = {k: (v, then.get(k)) for k, v in self._config().items()
                    if then.get(k) != v and k != "total_steps"}
        if mismatch:
            raise ValueError(f"cannot resume from {path}: settings differ (now, then): {mismatch}")
        if self.total_steps < int(state["step"]):
            raise ValueError(f"cannot resume from {path}: it is at step {state['step']}, beyond the {self.total_steps} "
                             "steps asked for")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if then.get("total_steps") != self.total_steps:
            # A longer (or shorter) run: the schedule takes the new length from here on (load_state_dict restored
            # the old one), and the current rates are those of the new schedule at this step.
            schedule = WarmupCosine(self.total_steps, self.warmup_steps, self.lr_schedule == "cosine",
                                    self.min_lr_ratio)
            self.scheduler.lr_lambdas = [schedule] * len(self.optimizer.param_groups)
            for group, base, fn in zip(self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas):
                group["lr"] = base * fn(self.scheduler.last_epoch)
        self.scaler.load_state_dict(state["scaler"])
        mine = state["ranks"][self.dist.rank]
        if isinstance(self.make_views, nn.Module):
            self.make_views.load_state_dict(mine["make_views"])
        _set_rng_state(mine["rng"], self.make_views)
        self.step = int(state["step"])

    # ---------------------------------------------------------------------------------------------------------- log
    def _open_log(self, resumed: bool) -> None:
        self._log_path = self.run_dir / "log.csv"
        self._log_columns: list[str] | None = None
        if resumed and self._log_path.exists():
            # Drop rows after the checkpoint we resume from: they will be computed again.
            with open(self._log_path, newline="") as f:
                rows = list(csv.DictReader(f))
            if rows:
                self._log_columns = list(rows[0].keys())
                kept = [r for r in rows if int(r["step"]) <= self.step]
                with atomic_writer(self._log_path, "w", newline="") as f:
                    writer = csv.DictWriter(f, self._log_columns)
                    writer.writeheader()
                    writer.writerows(kept)
        elif self._log_path.exists():
            self._log_path.unlink()
        if self._summary_writer is not None and not resumed:  # a fresh run's curves only, as in log.csv
            for stale in (self.run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"):
                stale.unlink()
        # The events of steps after the checkpoint (computed again) are purged by the writer opened at the first row.
        self._tb_purge_step = self.step + 1 if resumed else None

    def _write_log(self, row: dict[str, float]) -> None:
        if self._log_columns is None:
            self._log_columns = list(_BASE_COLUMNS) + sorted(k for k in row if k not in _BASE_COLUMNS)
            with atomic_writer(self._log_path, "w", newline="") as f:  # a complete header or none; rows appended
                csv.writer(f).writerow(self._log_columns)
        with open(self._log_path, "a", newline="") as f:
            csv.writer(f).writerow([_fmt(row.get(c, float("nan"))) for c in self._log_columns])
        if self._summary_writer is not None:
            if self._tb is None:
                self._tb = self._summary_writer(str(self.run_dir / TENSORBOARD_DIR), purge_step=self._tb_purge_step)
            for column in self._log_columns:
                if column != "step":  # the global step
                    self._tb.add_scalar(column, row.get(column, float("nan")), int(row["step"]))

    def _close_log(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    # --------------------------------------------------------------------------------------------------------- loop
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to ``total_steps``; with ``resume`` continue from the newest checkpoint in ``run_dir`` (a fresh run
        when there is none). The resumed run must share the checkpoint's settings (:meth:`_config`) except
        ``total_steps``: a larger one extends the run, and the data stream, RNG states and constant schedules continue
        exactly as if the run had been planned that long; a cosine learning-rate schedule (or a τ schedule of the
        engine) continues on the new length from the current step, which differs from a run planned that long.
        Without ``resume``, a ``run_dir`` holding checkpoints or a run's log is refused (:func:`resume_checkpoint`).
        Under ``torchrun`` the call runs in :func:`process_group`. Returns the last step's logged values."""
        with process_group(self.device) as self.dist:
            return self._fit(resume)

    def _fit(self, resume: bool) -> dict[str, float]:
        main = self.dist.is_main
        ckpt = resume_checkpoint(self.run_dir, resume)
        if ckpt is None:
            random.seed(self.seed + self.dist.rank)
            np.random.seed(self.seed + self.dist.rank)
            torch.manual_seed(self.seed + self.dist.rank)

        model = self.model.to(self.device)
        if isinstance(self.make_views, nn.Module):
            self.make_views.to(self.device)
        groups = getattr(model, "parameter_groups", None)
        params = groups() if callable(groups) else [p for p in model.parameters() if p.requires_grad]
        if isinstance(self._optimizer_arg, torch.optim.Optimizer):
            self.optimizer = self._optimizer_arg
        else:
            self.optimizer = self._optimizer_arg(params)
            for group in self.optimizer.param_groups:  # before the scheduler records the initial rates
                group["lr"] *= float(group.get("lr_scale", 1.0))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(self.total_steps, self.warmup_steps, self.lr_schedule == "cosine",
                                         self.min_lr_ratio))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        if ckpt is not None:
            self._load(ckpt)
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for stale in (self.run_dir / "checkpoints").glob(".*.tmp*"):  # atomic_writer's (and older) temporaries
                stale.unlink()
            self._open_log(resumed=ckpt is not None)

        net: nn.Module = model
        if self.dist.world_size > 1:
            if self.sync_bn:  # in place: parameters, buffers and state-dict keys are kept
                convert_sync_batchnorm(model)
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.find_unused_parameters)
        model.train()
        if isinstance(self.make_views, nn.Module):
            self.make_views.train()

        row: dict[str, float] = {}
        if self.step >= self.total_steps:
            return row
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (self.progress and main),
                   dynamic_ncols=True, desc="train")
        batches = iter(self._loader(self.step * self.accum_steps))
        non_blocking = self.pin_memory and self.device.type == "cuda"
        try:
            while self.step < self.total_steps:
                row = self._train_step(net, model, batches, non_blocking)
                self.step += 1
                if main:
                    self._write_log(row)
                    bar.update(1)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}")
                if self.on_step is not None:
                    self.on_step(self.step, row)
                final = self.step == self.total_steps
                if final or self.step % self.checkpoint_every == 0:
                    self._save(final)
        finally:
            bar.close()
            self._close_log()
        if self.dist.world_size > 1:
            # Ranks share parameters but not BatchNorm running statistics (each ran its own last forward): take
            # rank 0's so every process ends with the model rank 0 saved.
            for buf in model.buffers():
                dist.broadcast(buf, src=0)
        return row

    def _train_step(self, net: nn.Module, model: nn.Module, batches: Iterator, non_blocking: bool) -> dict[str, float]:
        t_step = time.perf_counter()
        data_wait = views_time = 0.0
        cuda_sync = self.sync_timing and self.device.type == "cuda"
        sums: dict[str, torch.Tensor] = {}
        epoch = (self.step * self.accum_steps + self.accum_steps - 1) // self.batches_per_epoch
        for micro in range(self.accum_steps):
            t0 = time.perf_counter()
            batch = next(batches)
            data_wait += time.perf_counter() - t0
            batch = _to_device(batch, self.device, non_blocking)

            t0 = time.perf_counter()
            with torch.no_grad():
                made = self.make_views(batch)
            views, scalars = made if isinstance(made, tuple) else (made, {})
            if cuda_sync:
                torch.cuda.synchronize(self.device)
            views_time += time.perf_counter() - t0

            last = micro == self.accum_steps - 1
            sync = net.no_sync() if (self.dist.world_size > 1 and not last) else contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                                    enabled=self.amp_dtype is not None):
                    out = net(views)
                loss = out["loss"]
                self.scaler.scale(loss.float() / self.accum_steps).backward()
            terms = {"loss": loss, **{k: v for k, v in out.items() if k != "loss" and _is_scalar(v)}, **scalars}
            for k, v in terms.items():
                v = torch.as_tensor(v, dtype=torch.float32).detach().to(self.device)
                sums[k] = sums[k] + v if k in sums else v

        names = list(sums)
        values = torch.stack([sums[k] for k in names]) / self.accum_steps
        if self.dist.world_size > 1:
            dist.all_reduce(values)
            values /= self.dist.world_size
        stats = dict(zip(names, values.tolist()))
        if not math.isfinite(stats["loss"]):
            raise FloatingPointError(f"the loss became {stats['loss']} at step {self.step + 1} of "
                                     f"{self.total_steps} (epoch {epoch}); the run stops here "
                                     f"(last checkpoint in {self.run_dir / 'checkpoints'})")

        if self.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                           self.grad_clip)
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        tau = float("nan")
        update = getattr(model, "update_targets", None)
        if update is not None:
            ret = update(self.step, self.total_steps)
            tau = float(ret) if _is_scalar(ret) else float("nan")
        return {"step": self.step + 1, "epoch": epoch, **stats, "tau": tau, "lr": lr, "data_wait_s": data_wait,
                "views_s": views_time, "step_s": time.perf_counter() - t_step}


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (float, int)) or (isinstance(v, torch.Tensor) and v.numel() == 1)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v) if not math.isfinite(v) else f"{v:.8g}"
    return str(v)
