"""Checks that a module follows the HEAR 2021 API the way HEAR's validator expects (for ``byola.hear``'s tests).

Checked: ``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings`` exist; the model is an
``nn.Module`` with positive integer ``sample_rate``, ``scene_embedding_size`` and ``timestamp_embedding_size``;
for several clip lengths and a batch of two, outputs are float32 tensors of the declared sizes and finite;
timestamps are ``[n_sounds, n_timestamps]`` float32 milliseconds, identical across the batch, evenly spaced,
within the clip and spanning most of it; and a clip embedded alone matches its row in the batch.
"""
from __future__ import annotations

from types import ModuleType
from typing import Sequence

import torch


class HearValidationError(AssertionError):
    """Every HEAR API violation found, one per line."""


def validate_hear_module(module: ModuleType, model_path: str | None = None,
                         durations: Sequence[float] = (0.3, 1.0, 2.37), atol: float = 1e-4) -> dict:
    """Run the checks above on ``module`` (``load_model(model_path)``, or ``load_model()`` when None).

    Returns a summary (sizes and timestamp hops per duration); raises ``HearValidationError`` listing problems.
    """
    problems: list[str] = []
    for name in ("load_model", "get_scene_embeddings", "get_timestamp_embeddings"):
        if not callable(getattr(module, name, None)):
            problems.append(f"missing function {name}")
    if problems:
        raise HearValidationError("\n".join(problems))
    model = module.load_model(model_path) if model_path is not None else module.load_model()
    if not isinstance(model, torch.nn.Module):
        problems.append(f"load_model returned {type(model).__name__}, not a torch.nn.Module")
    sizes = {}
    for attr in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        value = getattr(model, attr, None)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"model.{attr} must be a positive int, got {value!r}")
        sizes[attr] = value
    if problems:
        raise HearValidationError("\n".join(problems))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    summary = {**sizes, "hops_ms": {}}
    generator = torch.Generator().manual_seed(0)
    for seconds in durations:
        n = int(round(seconds * sizes["sample_rate"]))
        audio = (0.1 * torch.randn(2, n, generator=generator)).to(device)
        where = f"{seconds} s clips"
        scene = module.get_scene_embeddings(audio, model)
        problems += _check_tensor(scene, (2, sizes["scene_embedding_size"]), f"scene embeddings ({where})")
        out = module.get_timestamp_embeddings(audio, model)
        if not (isinstance(out, tuple) and len(out) == 2):
            problems.append(f"get_timestamp_embeddings must return (embeddings, timestamps) ({where})")
            continue
        emb, ts = out
        if not isinstance(emb, torch.Tensor) or emb.ndim != 3:
            problems.append(f"timestamp embeddings must be [n_sounds, n_timestamps, dim] ({where})")
            continue
        problems += _check_tensor(emb, (2, emb.shape[1], sizes["timestamp_embedding_size"]),
                                  f"timestamp embeddings ({where})")
        problems += _check_tensor(ts, (2, emb.shape[1]), f"timestamps ({where})")
        if problems:
            continue
        ts = ts.detach().cpu().double()
        duration_ms = 1000.0 * n / sizes["sample_rate"]
        if not torch.equal(ts[0], ts[1]):
            problems.append(f"timestamps differ between sounds of equal length ({where})")
        if ts.min() < -1e-3 or ts.max() > duration_ms + 1e-3:
            problems.append(f"timestamps outside the clip [0, {duration_ms:.1f}] ms: {ts.min():.2f}..{ts.max():.2f} "
                            f"({where})")
        if ts.shape[1] > 1:
            hops = ts[0].diff()
            if (hops <= 0).any() or (hops - hops.mean()).abs().max() > 1e-3 * hops.mean() + 1e-3:
                problems.append(f"timestamps not evenly spaced and increasing ({where}): hops {hops.tolist()[:5]}")
            if ts[0, -1] - ts[0, 0] < 0.5 * duration_ms - 2 * hops.mean():
                problems.append(f"timestamps span {ts[0, -1] - ts[0, 0]:.3f} of a {duration_ms:.0f} ms clip: "
                                f"not milliseconds? ({where})")
            summary["hops_ms"][seconds] = float(hops.mean())
        alone = module.get_scene_embeddings(audio[:1], model)
        if not torch.allclose(alone.float().cpu(), scene[:1].float().cpu(), atol=atol, rtol=1e-3):
            problems.append(f"a clip embedded alone differs from its row in a batch ({where})")
    if problems:
        raise HearValidationError("\n".join(problems))
    return summary


def _check_tensor(x, shape: tuple, what: str) -> list[str]:
    if not isinstance(x, torch.Tensor):
        return [f"{what}: expected a torch.Tensor, got {type(x).__name__}"]
    problems = []
    if x.dtype != torch.float32:
        problems.append(f"{what}: dtype {x.dtype}, expected torch.float32")
    if tuple(x.shape) != tuple(shape):
        problems.append(f"{what}: shape {tuple(x.shape)}, expected {tuple(shape)}")
    elif not torch.isfinite(x).all():
        problems.append(f"{what}: non-finite values")
    return problems
