"""byola: BYOL for Audio — pretraining, embedding and evaluation of general-purpose audio representations.

`byola.load(path)` returns an `Embedder` (see byola.embed); heavier modules are imported on first use.
"""
__version__ = "0.1.0"
__all__ = ["load", "Embedder", "__version__"]


def __getattr__(name: str):
    if name in ("load", "Embedder"):
        from . import embed

        return getattr(embed, name)
    raise AttributeError(f"module 'byola' has no attribute {name!r}")
