"""Where the benchmarks find the real recordings: ``$BYOLA_SHARED_DATA``, else ``../shared/data`` beside the
repository (each script also takes ``--data``)."""
from __future__ import annotations

import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("BYOLA_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
