"""Self-describing checkpoints and conversion of the official BYOL-A weights.

A checkpoint is one ``.safetensors`` file: its tensors are the encoder's state dict and its header metadata holds,
under the key ``"byola"``, a JSON document::

    {"format_version": 2,
     "modality": "audio" | "image",                             # what the encoder takes
     "encoder": {"name": "AudioNTT2020", "params": {...}},      # build_encoder(name, **params)
     "frontend": {...},                                         # the modality's input settings: audio
                                                                # LogMelSpectrogram(**frontend); image {size, mean, std}
     "norm_stats": {"mean": float, "std": float} | null,        # pre-normalization of the log-mel
     "provenance": {"source": ..., "created": ..., "byola_version": ..., ...}}

Format 1 (no ``modality``; image checkpoints kept ``"modality": "image"`` inside ``frontend``) is read unchanged: the
reader moves that entry to the top level, so every loaded metadata has the format-2 layout.

Loading never unpickles anything (safetensors only), so an untrusted checkpoint cannot execute code. Official
``.pth`` files are read with ``torch.load(weights_only=True)``, which restricts unpickling to tensors and containers.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from byola import __version__
from byola.errors import UsageError
from byola.files import atomic_write_with, file_sha256
from byola.frontend import MODULE_DEFAULT_BACKEND, LogMelSpectrogram
from byola.models import ENCODERS, build_encoder

FORMAT_VERSION = 2
METADATA_KEY = "byola"

# Frontend each official release was trained with (BYOL-A v1: librosa-style log-mel; v2: nnAudio).
_OFFICIAL_BACKEND = {"AudioNTT2020": "librosa", "AudioNTT2022": "nnaudio"}


class CheckpointError(UsageError):
    """A checkpoint or official weight file that cannot be used; ``str()`` names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def default_frontend_config(n_mels: int = 64, backend: str = MODULE_DEFAULT_BACKEND) -> dict:
    """BYOL-A's log-mel settings (`LogMelSpectrogram`'s defaults) in the form ``LogMelSpectrogram(**cfg)`` takes."""
    return LogMelSpectrogram(n_mels=n_mels, backend=backend).config()


def _norm_stats_dict(norm_stats: Any) -> dict | None:
    """``None``, a mapping or an object with ``mean``/``std`` (e.g. ``byola.norm.NormStats``) -> ``{mean, std}``."""
    if norm_stats is None:
        return None
    if isinstance(norm_stats, Mapping):
        mean, std = norm_stats.get("mean"), norm_stats.get("std")
    else:
        mean, std = getattr(norm_stats, "mean", None), getattr(norm_stats, "std", None)
    if mean is None or std is None:
        raise ValueError(f"norm_stats needs mean and std, got {norm_stats!r}")
    if not float(std) > 0:
        raise ValueError(f"norm_stats std must be positive, got {std}")
    return {"mean": float(mean), "std": float(std)}


def save_checkpoint(path: str | os.PathLike, encoder: nn.Module, frontend_config: Mapping, norm_stats: Any = None,
                    provenance: Mapping | None = None, modality: str = "audio") -> None:
    """Write ``encoder`` (which must have ``config()``) and its metadata to one safetensors file, atomically
    (`byola.files.atomic_write_with`: with the permissions the user's umask gives new files).
    ``frontend_config`` is the ``modality``'s input configuration.

    ``provenance`` gets ``created`` (UTC, ISO 8601) and ``byola_version`` unless it already has them.
    """
    path = Path(path)
    if not hasattr(encoder, "config"):
        raise TypeError(f"{type(encoder).__name__} has no config(); only registered encoders can be saved")
    if "modality" in frontend_config:
        raise ValueError("the modality is save_checkpoint's modality argument, not a frontend_config entry")
    enc_cfg = encoder.config()
    if enc_cfg.get("name") not in ENCODERS:
        raise ValueError(f"encoder {enc_cfg.get('name')!r} is not registered in byola.models.ENCODERS")
    prov = {"source": "byola"} | dict(provenance or {})
    prov.setdefault("created", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    prov.setdefault("byola_version", __version__)
    meta = {"format_version": FORMAT_VERSION, "modality": modality, "encoder": enc_cfg,
            "frontend": dict(frontend_config), "norm_stats": _norm_stats_dict(norm_stats), "provenance": prov}
    header = json.dumps(meta, allow_nan=False)  # fails early on values JSON cannot carry
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in encoder.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: save_file(tensors, tmp, metadata={METADATA_KEY: header}))


def read_metadata(path: str | os.PathLike) -> dict:
    """The checkpoint's metadata (validated), without building the encoder."""
    meta, _ = _read(path, tensors=False)
    return meta


def _read(path: str | os.PathLike, tensors: bool) -> tuple[dict, dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = (f.metadata() or {}).get(METADATA_KEY)
            state = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError) as e:
        hint = " (an official .pth file? convert it with `byola convert`)" if path.suffix in (".pth", ".pt") else ""
        raise CheckpointError(path, f"not a safetensors checkpoint{hint}: {e}") from None
    if header is None:
        raise CheckpointError(path, f"safetensors file without byola metadata (no {METADATA_KEY!r} header entry)")
    try:
        meta = json.loads(header)
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"byola metadata is not valid JSON: {e}") from None
    _validate(path, meta)
    if meta["format_version"] < 2:  # format 1: the modality sat inside "frontend" (images only)
        meta["frontend"] = dict(meta["frontend"])
        meta["modality"] = meta["frontend"].pop("modality", "audio")
    return meta, state


def _validate(path: Path, meta: Any) -> None:
    if not isinstance(meta, dict):
        raise CheckpointError(path, "byola metadata is not a JSON object")
    missing = [k for k in ("format_version", "encoder", "frontend", "norm_stats", "provenance") if k not in meta]
    if missing:
        raise CheckpointError(path, f"byola metadata lacks {', '.join(missing)}")
    version = meta["format_version"]
    if not isinstance(version, int):
        raise CheckpointError(path, f"format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(path, f"format_version {version} is newer than this byola ({__version__}) reads "
                                    f"(up to {FORMAT_VERSION}); upgrade byola")
    if version >= 2 and not isinstance(meta.get("modality"), str):
        raise CheckpointError(path, f"format_version {version} needs a modality string, got {meta.get('modality')!r}")
    enc = meta["encoder"]
    if not isinstance(enc, dict) or not isinstance(enc.get("params"), dict) or "name" not in enc:
        raise CheckpointError(path, f"encoder metadata must be {{name, params}}, got {enc!r}")
    if enc["name"] not in ENCODERS:
        raise CheckpointError(path, f"unknown encoder {enc['name']!r}; known encoders: {', '.join(sorted(ENCODERS))}")
    if not isinstance(meta["frontend"], dict):
        raise CheckpointError(path, "frontend metadata must be a JSON object")
    ns = meta["norm_stats"]
    if ns is not None and not (isinstance(ns, dict) and isinstance(ns.get("mean"), (int, float))
                               and isinstance(ns.get("std"), (int, float)) and ns["std"] > 0):
        raise CheckpointError(path, f"norm_stats must be null or {{mean, std > 0}}, got {ns!r}")


def load_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """Load a byola checkpoint: ``(encoder in eval mode, metadata)``. Raises ``CheckpointError`` on any problem."""
    meta, state = _read(path, tensors=True)
    enc = meta["encoder"]
    try:
        # Built on the meta device: nothing is allocated until the file's tensors are checked and assigned, so
        # tampered sizes in the metadata cannot make us allocate huge parameters.
        with torch.device("meta"):
            encoder = build_encoder(enc["name"], **enc["params"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(path, f"cannot build {enc['name']} with params {enc['params']}: {e}") from None
    _load_state(path, encoder, state)
    return encoder.eval(), meta


def _load_state(path: str | os.PathLike, encoder: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with a readable error naming missing, unexpected and mis-shaped tensors."""
    expected = encoder.state_dict()
    problems = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing tensors {missing}")
    if unexpected:
        problems.append(f"unexpected tensors {unexpected}")
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if shapes:
        problems.append("shape mismatch " + "; ".join(shapes))
    if problems:
        name = encoder.config()["name"] if hasattr(encoder, "config") else type(encoder).__name__
        raise CheckpointError(path, f"weights do not fit {name}: " + "; ".join(problems))
    encoder.load_state_dict(state, strict=True, assign=True)


_ENCODER_KEY = re.compile(r"^(.*?)((?:features|fc)\..*)$")


def load_official_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Read an official BYOL-A ``.pth`` file: ``(state dict with official key names, {"name", "params"})``.

    Accepts a plain state dict or one wrapped under ``"state_dict"``, with any common prefix before
    ``features.``/``fc.`` (e.g. ``model.``, ``module.``). v1 (AudioNTT2020) has a third conv block
    (``features.8``); v2 (AudioNTT2022) does not. ``d``, ``n_mels`` and hidden sizes come from the tensor shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    if _is_safetensors(path):
        try:
            read_metadata(path)
        except CheckpointError:
            raise CheckpointError(path, "a safetensors file, not an official BYOL-A .pth") from None
        raise CheckpointError(path, "already a byola checkpoint: nothing to convert")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for unusable files
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]  # torch's own text runs to several lines
        raise CheckpointError(path, f"not a PyTorch state dict ({type(e).__name__}: {first})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(path, "not a state dict of tensors")
    state: dict[str, torch.Tensor] = {}
    prefixes, others = set(), []
    for key, value in obj.items():
        m = _ENCODER_KEY.match(key)
        if m is None:
            others.append(key)
            continue
        prefixes.add(m.group(1))
        state[m.group(2)] = value
    if others or len(prefixes) != 1:
        reason = (f"keys outside features./fc.: {others[:5]}" if others
                  else f"several prefixes before features./fc.: {sorted(prefixes)}")
        raise CheckpointError(path, f"not a BYOL-A encoder state dict ({reason})")
    return state, _detect_architecture(path, state)


def _detect_architecture(path: Path, state: Mapping[str, torch.Tensor]) -> dict:
    try:
        channels = state["features.0.weight"].shape[0]
        fc0, fc3 = state["fc.0.weight"], state["fc.3.weight"]
    except KeyError as e:
        raise CheckpointError(path, f"not a BYOL-A encoder state dict (no {e.args[0]})") from None
    conv_in, hidden = fc0.shape[1], fc0.shape[0]
    if "features.8.weight" in state:
        name, hop, d = "AudioNTT2020", 8, fc3.shape[0]
    else:
        name, hop, d = "AudioNTT2022", 4, conv_in + fc3.shape[0]
    if conv_in % channels:
        raise CheckpointError(path, f"fc.0 input {conv_in} is not a multiple of {channels} conv channels")
    params = {"n_mels": conv_in // channels * hop, "d": int(d), "mlp_hidden_d": int(hidden),
              "conv_channels": int(channels), "dropout": 0.3}
    return {"name": name, "params": params}


def load_official(src: str | os.PathLike, norm_stats: Any = None) -> tuple[nn.Module, dict]:
    """An official BYOL-A ``.pth`` file converted in memory: ``(encoder in eval mode, metadata)``, the metadata
    being what :func:`convert_official` writes (nothing is written here)."""
    src = Path(src)
    state, arch = load_official_state_dict(src)
    with torch.device("meta"):
        encoder = build_encoder(arch["name"], **arch["params"])
    _load_state(src, encoder, state)
    backend = _OFFICIAL_BACKEND[arch["name"]]
    provenance = {
        "source": "official BYOL-A weights (nttcslab/byol-a)",
        "official_file": src.name,
        "official_sha256": file_sha256(src),
        "official_version": "v1" if arch["name"] == "AudioNTT2020" else "v2",
        "trained_frontend_backend": backend,
        "norm_stats_note": "official files carry no normalization statistics"
        if norm_stats is None else "normalization statistics supplied at conversion",
    }
    meta = {"format_version": FORMAT_VERSION, "modality": "audio", "encoder": encoder.config(),
            "frontend": default_frontend_config(arch["params"]["n_mels"], backend),
            "norm_stats": _norm_stats_dict(norm_stats), "provenance": provenance}
    return encoder.eval(), meta


def load_any(path: str | os.PathLike) -> tuple[nn.Module, dict]:
    """A byola ``.safetensors`` checkpoint (:func:`load_checkpoint`) or an official BYOL-A ``.pth`` file
    (:func:`load_official`, converted in memory), told apart by their first bytes (:func:`_is_safetensors`; a
    safetensors file's first bytes may read like a pickle's or a zip's)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    with open(path, "rb") as f:
        head = f.read(2)
    torch_file = head.startswith(b"PK") or head[:1] == b"\x80"  # zip (torch >= 1.6) or legacy pickle
    return load_official(path) if torch_file and not _is_safetensors(path) else load_checkpoint(path)


def _is_safetensors(path: Path) -> bool:
    """Whether ``path`` opens like a safetensors file: the length of its JSON header (8 bytes, little-endian), then
    the header, which opens with ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size


def convert_official(src: str | os.PathLike, dst: str | os.PathLike, norm_stats: Any = None,
                     overwrite: bool = False) -> dict:
    """Convert an official BYOL-A ``.pth`` file to a byola checkpoint at ``dst``; returns its metadata.

    The frontend config records the log-mel the weights were trained on (backend ``librosa`` for v1,
    ``nnaudio`` for v2). Official files carry no normalization statistics: pass ``norm_stats`` (``{mean, std}``)
    or leave it ``None`` so that the embedder computes them from its inputs. An existing ``dst`` raises
    `FileExistsError` unless ``overwrite``; ``dst`` naming ``src`` (under any name) always does.
    """
    src, dst = Path(src), Path(dst)
    if dst.exists() or dst.is_symlink():
        if src.exists() and dst.exists() and os.path.samefile(src, dst):
            raise FileExistsError(f"{dst} is the source file {src}: converting onto it would destroy it")
        if not overwrite:
            raise FileExistsError(f"{dst} exists: pass --overwrite to replace it")
    encoder, meta = load_official(src, norm_stats)
    save_checkpoint(dst, encoder, meta["frontend"], norm_stats, meta["provenance"])
    return read_metadata(dst)
