"""pretrained/corpus/build.py: licences read from DEP-5 copyright files, evaluation clips left out by content hash,
music capped, mixes by domain share. Generated audio only."""
from __future__ import annotations

import argparse
import importlib.util
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SPEC = importlib.util.spec_from_file_location(
    "corpus_build", Path(__file__).resolve().parents[1] / "pretrained" / "corpus" / "build.py")
build = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = build  # dataclasses look their module up
SPEC.loader.exec_module(build)

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: *
Copyright: 2004 Game Team
License: GPL-2

Files: share/game/Data/Sounds/*
Copyright:
 2006 Sound Author
License: GFDL-1.3

Files: share/game/Data/Sounds/Drop*.ogg
Copyright: saugox
License: CC-BY-SA-3.0
"""


@pytest.fixture
def doc(tmp_path, monkeypatch):
    (tmp_path / "game-data").mkdir()
    (tmp_path / "game-data" / "copyright").write_text(COPYRIGHT)
    monkeypatch.setattr(build, "DOC", tmp_path)
    return tmp_path


def test_dep5_last_matching_paragraph_wins(doc):
    assert build.dep5_licence("game-data", "share/game/Data/Sounds/Drop1.ogg") == ("CC-BY-SA-3.0", "saugox")
    assert build.dep5_licence("game-data", "share/game/Data/Sounds/boom.ogg") == ("GFDL-1.3", "2006 Sound Author")
    assert build.dep5_licence("game-data", "share/game/Data/Music/a.ogg")[0] == "GPL-2"


def test_tree_path_maps_installed_files_and_archive_members():
    src = build.Source("game-data", "sound", (), tree=("/usr/share/games/game/", "share/game/"))
    assert build.tree_path(src, "/usr/share/games/game/Data/Sounds/x.ogg") == "share/game/Data/Sounds/x.ogg"
    pk3 = build.Source("m", "music", (), tree=("music/", "base/music/"))
    assert build.tree_path(pk3, "/x/0music.pk3:music/a.ogg") == "base/music/a.ogg"


def test_unlisted_files_have_no_licence(tmp_path, monkeypatch):
    (tmp_path / "theme").mkdir()
    (tmp_path / "theme" / "copyright").write_text(
        "Format: x\n\nFiles: stereo/bell.oga\nCopyright: A\nLicense: GPL-2+\n")
    monkeypatch.setattr(build, "DOC", tmp_path)
    assert build.dep5_licence("theme", "stereo/bell.oga") == ("GPL-2+", "A")
    assert build.dep5_licence("theme", "stereo/other.oga") is None


def _args(**kw) -> argparse.Namespace:
    base = dict(segment_sec=1.0, min_sec=0.1, silence_rms=1e-4, max_segments_music=3)
    return argparse.Namespace(**{**base, **kw})


def test_evaluation_clip_content_is_excluded_and_long_files_are_cut(tmp_path):
    rng = np.random.default_rng(0)
    clip = (0.1 * rng.standard_normal(8000)).astype("float32")
    sf.write(tmp_path / "copy_of_eval.wav", clip, 16000, subtype="FLOAT")           # same content, another name
    sf.write(tmp_path / "long.wav", (0.1 * rng.standard_normal(16000 * 3 + 4000)).astype("float32"), 16000,
             subtype="FLOAT")
    names, hashes = {"some_eval_clip"}, {build.sha256_pcm(clip)}
    src = build.Source("pkg", "sound", (), "GPL-2", "someone")
    cands = [build.Candidate(src, str(tmp_path / n), "GPL-2", "someone") for n in ("copy_of_eval.wav", "long.wav")]
    rows, excluded = build.build_source(cands, "sound", tmp_path / "out", names, hashes, _args(), random.Random(0))
    assert [e["reason"] for e in excluded] == ["content hash"]
    assert [r["start_s"] for r in rows] == [0.0, 1.0, 2.0, 3.0]
    assert [r["duration_s"] for r in rows] == [1.0, 1.0, 1.0, 0.25]
    written, sr = sf.read(tmp_path / "out" / rows[1]["segment"], dtype="int16")
    assert sr == 16000 and build.hashlib.sha256(written.astype("<i2").tobytes()).hexdigest() == rows[1]["sha256"]


def test_music_is_capped_and_mixes_follow_shares(tmp_path):
    rng = np.random.default_rng(1)
    sf.write(tmp_path / "track.wav", (0.1 * rng.standard_normal(16000 * 10)).astype("float32"), 16000)
    src = build.Source("m", "music", (), "GPL-2", "x")
    rows, _ = build.build_source([build.Candidate(src, str(tmp_path / "track.wav"), "GPL-2", "x")], "music",
                                 tmp_path / "out", set(), set(), _args(), random.Random(0))
    assert len(rows) == 3
    domains = ["speech"] * 20 + ["sound"] * 5 + ["music"] * 8
    fake = [{"segment": f"s{i}.flac", "domain": d} for i, d in enumerate(domains)]
    build.MIXES["test"] = {"speech": 0.5, "sound": 0.25, "music": 0.25}
    try:
        build.write_mixes(tmp_path, fake, seed=0)
    finally:
        del build.MIXES["test"]
    listed = (tmp_path / "train_test.txt").read_text().split()
    assert len(listed) == 20  # sound (5 = 25%) is the scarcest: 10 speech + 5 sound + 5 music
