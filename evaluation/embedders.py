"""The embedding interface the protocol drives (:class:`ClipEmbedder`), the log-mel statistics baseline and
:class:`ModelEmbedder`, the adapter for byola models."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable, Protocol, runtime_checkable

import torch
from torch import nn

if TYPE_CHECKING:
    from byola.embed import Embedder


@runtime_checkable
class ClipEmbedder(Protocol):
    """What the protocol needs of an embedder; any object with these members can be evaluated.

    ``name`` identifies the weights and configuration: it is part of the embedding cache key, so change it whenever
    the embeddings would change (e.g. a checkpoint's content hash plus its frontend config). ``sample_rate`` is the
    rate of the waveforms it expects (16000 for byola models). An optional ``provenance() -> dict`` (json-able)
    describes it in the report's provenance.json (the checkpoint file and its SHA-256, device, settings).
    """

    name: str
    sample_rate: int

    def fit_norm(self, clips: Iterable[torch.Tensor]) -> dict | None:
        """Compute exact normalization statistics from ``clips`` (1-D waves: the training split of the current
        fold, already cropped to ``unit_sec``), use them for later ``embed_clips`` calls and return them JSON-able
        (stored next to the cached embeddings); or return ``None`` without reading the clips when it does not
        normalize."""
        ...

    def embed_clips(self, waves: torch.Tensor) -> torch.Tensor:
        """One embedding per clip: ``waves [B, T]`` -> ``[B, D]``."""
        ...


EmbedderFactory = Callable[[], ClipEmbedder]  # `evaluate` calls each factory once


class LogMelStatsEmbedder:
    """Baseline: per-mel mean and standard deviation over time of the clip's log-mel spectrogram (``2 * n_mels``).

    No pre-normalization: a global affine change of the log-mel moves these features by an affine map that the
    probe's standardization undoes, so ``fit_norm`` returns ``None``. ``frontend`` defaults to byola's
    ``LogMelSpectrogram()`` (BYOL-A's 64-mel settings); any module mapping ``[B, T] -> [B, F, frames]`` works.
    """

    def __init__(self, frontend: nn.Module | None = None, sample_rate: int = 16000, device: str | None = None):
        if frontend is None:
            from byola.frontend import LogMelSpectrogram

            frontend = LogMelSpectrogram(sample_rate=sample_rate)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.frontend = frontend.to(self.device).eval()
        self.sample_rate = sample_rate
        config = frontend.config() if hasattr(frontend, "config") else {"module": type(frontend).__name__}
        self.name = "logmel-stats:" + ",".join(f"{k}={v}" for k, v in sorted(config.items()))

    def fit_norm(self, clips: Iterable[torch.Tensor]) -> None:
        return None

    def provenance(self) -> dict:
        """The device it computes on (its frontend settings are in ``name``)."""
        return {"device": str(self.device)}

    @torch.no_grad()
    def embed_clips(self, waves: torch.Tensor) -> torch.Tensor:
        mel = self.frontend(waves.to(self.device, torch.float32))
        return torch.cat([mel.mean(dim=-1), mel.std(dim=-1)], dim=1)


class ModelEmbedder:
    """Adapter from a byola model (``byola.embed.Embedder``: ``frontend``, ``sample_rate``,
    ``set_norm_stats(NormStats)``, ``embed_batch(waves) -> [B, D]``) to the evaluation interface.

    ``fold_norm=True`` (EVAR's protocol): pre-normalization statistics are computed exactly from each fold's
    training clips with ``byola.norm.compute_norm_stats``; ``False`` keeps the model's own (checkpoint) statistics,
    and ``name`` must then identify them. ``name`` is the cache identity, e.g. ``"ckpt:" + sha256[:16]``.
    """

    def __init__(self, model: Embedder, name: str, fold_norm: bool = True, batch_size: int = 64):
        self.model, self.fold_norm, self.batch_size = model, fold_norm, batch_size
        self.sample_rate = int(model.sample_rate)
        self.name = f"{name}|norm={'fold' if fold_norm else 'model'}"

    def fit_norm(self, clips: Iterable[torch.Tensor]) -> dict | None:
        if not self.fold_norm:
            return None
        from byola.norm import compute_norm_stats

        stats = compute_norm_stats(clips, self.model.frontend, sample_rate=self.sample_rate,
                                   batch_size=self.batch_size, progress=False)
        self.model.set_norm_stats(stats)
        return stats.to_dict()

    def embed_clips(self, waves: torch.Tensor) -> torch.Tensor:
        return self.model.embed_batch(waves)

    def provenance(self) -> dict:
        """``norm`` ("fold" or "model"); for a model loaded by ``byola.load``: ``checkpoint`` (the file's absolute
        path and SHA-256) or, for a random initialization, ``architecture`` (the file its architecture came from),
        ``model`` (its name: hub name or file stem), ``device`` and ``settings`` (``Embedder.settings()``, whose
        ``checkpoint_id`` names the weights; without the statistics of the last fold under fold normalization)."""
        from byola.provenance import file_record

        record: dict = {"norm": "fold" if self.fold_norm else "model"}
        path = getattr(self.model, "checkpoint_path", None)  # set by byola.load; absent for a model built in memory
        if path:
            trained = self.model.checkpoint_id.startswith("sha256:")  # else "random-init:SEED:..." (byola.load)
            record["checkpoint" if trained else "architecture"] = file_record(path)
            record["model"] = self.model.model_name
        if hasattr(self.model, "settings"):  # a byola.embed.Embedder
            settings = self.model.settings()
            if self.fold_norm:
                settings.pop("norm_stats")
            record.update(device=str(self.model.device), settings=settings)
        return record
