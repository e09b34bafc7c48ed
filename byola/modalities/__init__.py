"""The modalities byola pretrains on, by recipe ``modality`` name. A new modality is one module declaring a
:class:`~byola.modalities.base.Modality` and one entry here."""
from __future__ import annotations

from byola.modalities.audio import AUDIO
from byola.modalities.base import Modality, Pipeline, PipelineContext
from byola.modalities.image import IMAGE

MODALITIES: dict[str, Modality] = {m.name: m for m in (AUDIO, IMAGE)}

__all__ = ["MODALITIES", "Modality", "Pipeline", "PipelineContext"]
