"""The model shipped in pretrained/ is byola embed's default, describes itself, and embeds the example clips."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

import byola
from byola.checkpoint import read_metadata
from byola.hub import shipped_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_default_checkpoint_is_small_and_self_describing():
    path = shipped_checkpoint()
    assert path.stat().st_size <= 30 * 2**20
    meta = read_metadata(path)
    assert meta["norm_stats"]["std"] > 0
    assert meta["encoder"]["name"] in ("AudioNTT2020", "AudioNTT2022")
    assert meta["provenance"]["recipe"]


def test_readme_quick_start_embeds_the_examples(tmp_path):
    done = subprocess.run([sys.executable, "-m", "byola", "embed", str(EXAMPLES), "--out", str(tmp_path / "out"),
                           "--progress", "False"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    emb = np.load(tmp_path / "out" / "embeddings.npy")
    assert emb.shape == (2, byola.load().embed_dim) and np.isfinite(emb).all()
    # "yes" and "no" are different words: their embeddings differ.
    assert not np.allclose(emb[0], emb[1])
