"""What a run records so that its numbers can be reproduced: the environment it ran in, UTC timestamps, and files
named by path and content hash. Pretraining (checkpoint provenance) and evaluation (provenance.json) use these."""
from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from importlib import metadata

import torch

from . import __version__
from .files import file_sha256
from .precision import cpu_model

# Distributions besides byola and torch whose versions shape byola's numbers (decoding, log-mel, probe).
RECORDED_DISTRIBUTIONS = ("torchaudio", "numpy", "scikit-learn", "soundfile", "nnAudio", "librosa")


def _version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (read from its metadata, nothing imported); None when absent."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict:
    """The environment of this process (json-able): ``byola_version``, ``python_version``, ``torch_version`` and a
    ``NAME_version`` for each of :data:`RECORDED_DISTRIBUTIONS` (None: not installed); ``platform``, ``cpu`` (model
    name), ``cpu_count``; ``cuda_version`` (of this torch build, None for a CPU build) and ``gpus`` (the visible
    CUDA devices' names)."""
    versions = {f"{name.lower().replace('-', '_')}_version": _version(name) for name in RECORDED_DISTRIBUTIONS}
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"byola_version": __version__, "python_version": platform.python_version(),
            "torch_version": torch.__version__, **versions,
            "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
            "cuda_version": torch.version.cuda, "gpus": gpus}


def device_name(device: str | torch.device) -> str:
    """The hardware behind a torch device: the GPU's name for CUDA, else the CPU model."""
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second (``2025-01-31T12:00:00+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def file_record(path: str | os.PathLike) -> dict:
    """``{"path": absolute path, "sha256": of its content}``: a file named so that a reader can check it is the
    same one."""
    return {"path": os.path.abspath(path), "sha256": file_sha256(path)}
