"""Pretraining of any BYOL-family method (:data:`byola.engine.methods.METHODS`) on any modality
(:data:`byola.modalities.MODALITIES`: audio, BYOL-A; image): reads a checked recipe (:mod:`byola.recipe`), wires the
modality's data and views, the encoder and the engine into the one training loop
(:class:`byola.engine.trainer.Trainer`), and exports self-describing checkpoints.

Run folder (``out``): ``log.csv`` (per-step loss, tau, lr, timings, batch statistics), ``config.yaml`` (the complete
resolved recipe), ``resumes.json`` (settings changed on resume, with the step they took effect), the modality's
files (audio: ``norm_stats.json``), ``checkpoints/state-*.pt`` (training state for ``resume``),
``model-step<N>.safetensors`` (periodic exports) and ``model.safetensors`` (the final model:
``byola embed --checkpoint OUT/model.safetensors``).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist
import yaml

from byola.checkpoint import save_checkpoint
from byola.engine.distributed import default_device, dist_info, process_group
from byola.engine.trainer import Trainer, checkpoint_step, resume_checkpoint
from byola.files import atomic_write_text
from byola.modalities import PipelineContext
from byola.plots import plot_run
from byola.provenance import device_name, environment, utc_now
from byola.recipe import Recipe, RecipeError, check_corpus_size, load, resume_changes

__all__ = ["pretrain"]

log = logging.getLogger(__name__)


@contextlib.contextmanager
def _main_rank_output(is_main: bool) -> Iterator[None]:
    """Under ``torchrun``, only rank 0 logs info and warnings (each message once); errors still show everywhere."""
    if is_main:
        yield
        return
    logger = logging.getLogger("byola")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _record_resume(out_dir: Path, step: int, changes: dict[str, tuple[Any, Any]]) -> list[dict[str, Any]]:
    """Append ``changes`` (effective from ``step``) to ``out_dir/resumes.json``; returns the whole history."""
    path = out_dir / "resumes.json"
    history = json.loads(path.read_text()) if path.exists() else []
    if changes:
        history.append({"step": step, "changed": {k: {"then": a, "now": b} for k, (a, b) in changes.items()}})
        atomic_write_text(path, json.dumps(history, indent=1))
    return history


def pretrain(data: Sequence[str] | str, recipe: str, out: str, resume: bool = False, **overrides: Any) -> Path:
    """Pretrain an encoder with a BYOL-family method following ``recipe`` (a name in ``recipes/`` such as
    ``"byola_v2"`` or a YAML path), in the run folder ``out``. ``overrides`` change recipe values
    (``**{"optim.lr": 1e-4}``, ``optim__lr=1e-4`` or ``lr=1e-4``; see :func:`byola.recipe.resolve_config`);
    ``method.name`` selects any method of :data:`byola.engine.methods.METHODS`. Every recipe error is raised as
    :class:`byola.recipe.RecipeError` before any data is read.

    ``resume`` continues a run from its newest checkpoint. The recipe must be the run's own, except the values in
    :data:`byola.recipe.RESUMABLE`; a larger ``train.steps`` (or ``train.epochs``) extends a finished run, exactly
    as if it had been planned that long when the schedules do not depend on the run length (constant learning rate
    and τ); with a cosine schedule they continue from the current step on the longer schedule (docs/pretrain.md).
    Changes are recorded in ``out/resumes.json`` and in the exported models' provenance.

    The recipe's ``modality`` (default ``audio``) chooses the data: ``audio``: ``data`` is folders (searched
    recursively), audio files and text files listing paths; ``image``: image folders (``data.dataset: folder``) or
    the root folder of torchvision's CIFAR-10 / STL-10 (``cifar10`` / ``stl10``).

    Under ``torchrun`` every process runs this function; they train with DDP, only rank 0 writes and reports.
    Returns the path of the final model (``out/model.safetensors``).
    """
    t_start = time.time()
    cfg = load(recipe, overrides)
    recipe_name = Path(recipe).stem
    out_dir = Path(out)
    # Before any data work: refuses to start over an existing run, or one whose exported models would be overwritten.
    resumed_from = resume_checkpoint(out_dir, resume, trained=("model*.safetensors",))
    saved = out_dir / "config.yaml"
    changes = resume_changes(yaml.safe_load(saved.read_text()), cfg) if resume and saved.exists() else {}
    with _main_rank_output(dist_info().is_main):
        return _run(data, cfg, recipe_name, out_dir, resume, resumed_from, changes, t_start)


def _run(data: Sequence[str] | str, cfg: Recipe, recipe_name: str, out_dir: Path, resume: bool,
         resumed_from: Path | None, changes: dict[str, tuple[Any, Any]], t_start: float) -> Path:
    train, modality = cfg.train, cfg.modality_entry
    info = dist_info()
    sources = [data] if isinstance(data, str) else list(data)
    dataset = modality.dataset(cfg.inputs, sources, cfg.seed)
    total_steps = check_corpus_size(cfg, len(dataset), info.world_size)
    done = checkpoint_step(resumed_from) if resumed_from is not None else 0
    if done > total_steps:  # said here, before the statistics pass, rather than by the trainer when it loads
        raise RecipeError(f"--resume: the run is at step {done}, beyond the {total_steps} steps asked for",
                          "give more --train.epochs" if train.steps is None else f"give --train.steps {done} or more")
    device = torch.device(train.device) if train.device else default_device()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = train.cudnn_benchmark  # fixed crop size: pick fast kernels
    with process_group(device):
        history: list[dict[str, Any]] = []
        if info.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            if resumed_from is not None:
                history = _record_resume(out_dir, checkpoint_step(resumed_from), changes)
            atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        if info.world_size > 1:
            dist.barrier()

        spec = cfg.method_spec()
        generator = torch.Generator(device=device).manual_seed(cfg.seed * 1000 + info.rank)
        pipe = modality.pipeline(PipelineContext(
            cfg.inputs, dataset, spec, out_dir, cfg.seed, generator, resume,
            progress=train.progress and info.is_main, channels_last=train.channels_last))

        # The model is built from the same seed on every rank (DDP also broadcasts rank 0's weights).
        torch.manual_seed(cfg.seed)
        encoder, engine = cfg.build_engine()
        if train.channels_last:
            engine.to(memory_format=torch.channels_last)
        if train.compile:
            encoder.compile()  # in place: parameter names (and checkpoints) are unchanged

        provenance_base = {
            "recipe": recipe_name, "config": cfg.to_dict(), "modality": cfg.modality, "method": spec.to_dict(),
            "data": {"sources": [os.path.abspath(s) for s in sources], **pipe.data_info},
            "resumes": history,
            **environment(),  # byola_version, torch_version, ... (byola.provenance)
            "hardware": {"device": device_name(device), "world_size": info.world_size},
        }

        def export(step: int, final: bool) -> None:
            path = out_dir / ("model.safetensors" if final else f"model-step{step:08d}.safetensors")
            provenance = {**provenance_base, "step": step, "total_steps": trainer.total_steps, "final": final,
                          "wall_time_s": round(time.time() - t_start, 1),
                          "created": utc_now()}
            save_checkpoint(path, encoder, pipe.export_config, pipe.norm_stats(), provenance, modality=cfg.modality)
            periodic = sorted(out_dir.glob("model-step*.safetensors"))
            for old in periodic[:-train.keep_checkpoints]:
                old.unlink()

        trainer = Trainer(
            engine, cfg.optimizer, dataset, pipe.make_views, out_dir, batch_size=train.batch_size,
            epochs=None if train.steps else train.epochs, steps=train.steps, seed=cfg.seed,
            lr_schedule=train.lr_schedule, warmup_steps=train.warmup_steps, min_lr_ratio=train.min_lr_ratio,
            accum_steps=train.accum_steps, amp=train.amp, grad_clip=train.grad_clip,
            checkpoint_every=train.checkpoint_every, keep_checkpoints=train.keep_checkpoints, export=export,
            num_workers=pipe.num_workers, pin_memory=None, device=device, progress=train.progress and info.is_main,
            prefetch_factor=train.prefetch_factor, sync_bn=train.sync_bn, tensorboard=train.tensorboard,
            sync_timing=train.sync_timing)
        log.info("training %s (%s, %s) for %d steps (%d batches of %d per epoch per process) on %s", recipe_name,
                 cfg.modality, spec.name, trainer.total_steps, trainer.batches_per_epoch, trainer.batch_size, device)
        trainer.fit(resume=resume)
        if info.is_main:
            plot_run(out_dir)  # curves.png: loss, tau, lr and batch statistics from log.csv
        return out_dir / "model.safetensors"
