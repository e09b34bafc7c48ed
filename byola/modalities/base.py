"""What a modality declares for pretraining (:class:`Modality`) and what it hands the generic wiring
(:class:`Pipeline`). :mod:`byola.pretrain` knows no modality: it reads these."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from byola.engine.methods import MethodSpec
from byola.norm import NormStats


@dataclass(frozen=True)
class PipelineContext:
    """What the wiring gives a modality to build its pipeline."""

    inputs: dict[str, Any]        # the modality's recipe sections, by name
    dataset: Dataset              # from Modality.dataset
    spec: MethodSpec              # views: spec.n_views, spec.view_augmentations
    out_dir: Path                 # the run folder (statistics files)
    seed: int
    generator: torch.Generator    # the views' randomness (checkpointed by the trainer)
    resume: bool
    progress: bool
    channels_last: bool


@dataclass
class Pipeline:
    """A modality's part of a run."""

    make_views: nn.Module                          # the trainer's make_views: batch -> (views, logged scalars)
    export_config: dict[str, Any]                  # the checkpoint's input configuration ("frontend" entry)
    norm_stats: Callable[[], NormStats | None]     # statistics exported with the model
    data_info: dict[str, Any]                      # provenance
    num_workers: int                               # DataLoader workers


@dataclass(frozen=True)
class Modality:
    """One modality of pretraining: its recipe sections (dataclasses, ``data`` first), the encoder arguments it
    derives from them (``encoder_inputs``), its cross-section checks (``check(inputs, model_params)``, raising
    ``ValueError``), its dataset (``dataset(inputs, sources, seed)``; listing only, no statistics) and its
    device-side pipeline (``pipeline(context)``)."""

    name: str
    sections: dict[str, type]
    encoder_inputs: Callable[[dict[str, Any]], dict[str, Any]]
    check: Callable[[dict[str, Any], dict[str, Any]], None]
    dataset: Callable[[dict[str, Any], Sequence[str], int], Dataset]
    pipeline: Callable[[PipelineContext], Pipeline]
