"""Optional dependencies (pip extras): a module of an extra is imported on first use, and a missing one is a
one-line :class:`byola.errors.UsageError` naming the extra to install.

- ``image``: torchvision and Pillow, used by the image variants only (``byola/models/image.py``,
  ``byola/augment/image.py``, ``byola/image_data.py``); audio embedding, evaluation and pretraining never use them.
- ``librosa``: the ``librosa`` log-mel backend (``byola/frontend.py``; the reference, BYOL-A v1's own front end),
  with numba and llvmlite about 220 MB; the default backend, torchaudio, computes the same log-mel.
- ``parquet``: pyarrow, for ``byola embed --format parquet`` (``byola/embed_job.py``).
- ``tensorboard``: TensorBoard logging of pretraining (``--train.tensorboard=true``; ``torch.utils.tensorboard``
  in ``byola/engine/trainer.py``).
"""
from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .errors import UsageError


class _OptionalModule(ModuleType):
    """Stands for ``name`` until an attribute is first read, then imports it (or says which extra to install)."""

    def __init__(self, name: str, extra: str) -> None:
        super().__init__(name)
        self._extra = extra
        self._module: ModuleType | None = None

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        if self._module is None:
            try:
                self._module = importlib.import_module(self.__name__)
            except ImportError as err:
                raise UsageError(f"{self.__name__} is not installed ({err.msg})",
                                 f"install the extra: pip install 'byola[{self._extra}]'") from None
        return getattr(self._module, attr)


def optional_module(name: str, extra: str) -> Any:
    """A stand-in for module ``name`` of the pip extra ``extra``, imported when first used."""
    return _OptionalModule(name, extra)
