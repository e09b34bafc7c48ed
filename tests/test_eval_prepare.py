"""Each dataset's prepare step on a tiny fake copy of its real folder layout and list/CSV formats."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from byola.evaluation.prepare import PrepareError, prepare
from byola.evaluation.tasks import load_task


def _wav(path: Path, sr: int = 16000, channels: int = 1, seconds: float = 0.05, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(sr * seconds)
    wave = 0.1 * np.sin(np.arange(n) / 7.0)[:, None].repeat(channels, axis=1).astype(np.float32)
    sf.write(path, wave, sr, format=fmt)


def _rows(csv_path: Path) -> list[dict]:
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def _is_16k_mono(path: Path) -> bool:
    info = sf.info(path)
    return info.samplerate == 16000 and info.channels == 1


def _check(csv_path: Path, n: int) -> list[dict]:
    rows = _rows(csv_path)
    assert len(rows) == n
    task = load_task(csv_path)  # every file exists, split/fold valid
    assert all(_is_16k_mono(f) for f in task.files)
    return rows


def _esc50_source(tmp_path: Path, meta: list[tuple[str, int, int, str]], seconds: float = 0.05) -> Path:
    """An ESC-50 folder in the official layout: meta/esc50.csv with the (filename, fold, target, category) rows and
    a 44.1 kHz wav per row under audio/."""
    src = tmp_path / "ESC-50-master"
    (src / "meta").mkdir(parents=True)
    with open(src / "meta" / "esc50.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for name, fold, target, cat in meta:
            w.writerow([name, fold, target, cat, "False", name.split("-")[1], "A"])
            _wav(src / "audio" / name, sr=44100, seconds=seconds)
    return src


def test_esc50(tmp_path):
    meta = [("1-100032-A-0.wav", 1, 0, "dog"), ("1-100038-A-14.wav", 1, 14, "chirping_birds"),
            ("2-100648-A-43.wav", 2, 43, "chainsaw"), ("5-9032-A-0.wav", 5, 0, "dog")]
    _esc50_source(tmp_path, meta)
    rows = _check(prepare("esc50", tmp_path, tmp_path / "out" / "esc50"), 4)
    assert [(r["label"], r["fold"]) for r in rows] == [("dog", "1"), ("chirping_birds", "1"), ("chainsaw", "2"),
                                                       ("dog", "5")]
    assert rows[0]["file_name"] == "audio/1-100032-A-0.wav"


def test_esc50_builtin_task_resolves_through_data_root(tmp_path):
    src = _esc50_source(tmp_path, [(f"{1 + i % 5}-{i}-A-{i}.wav", 1 + i % 5, i, f"class{i}") for i in range(50)],
                        seconds=0.01)
    prepare("esc50", src, tmp_path / "data" / "esc50", num_workers=2)
    task = load_task("esc50", data_root=tmp_path / "data")
    assert task.unit_sec == 5.0 and len(task.classes) == 50 and len(task.folds()) == 5


def test_us8k_converts_rates_and_channels(tmp_path):
    src = tmp_path / "UrbanSound8K"
    meta = [("100032-3-0-0.wav", 5, 3, "dog_bark", 44100, 2),
            ("100263-2-0-117.wav", 5, 2, "children_playing", 48000, 1),
            ("101415-3-0-2.wav", 1, 3, "dog_bark", 16000, 1), ("102305-6-0-0.wav", 10, 6, "gun_shot", 22050, 2)]
    (src / "metadata").mkdir(parents=True)
    with open(src / "metadata" / "UrbanSound8K.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"])
        for name, fold, cid, cls, sr, ch in meta:
            w.writerow([name, name.split("-")[0], 0.0, 0.05, 1, fold, cid, cls])
            _wav(src / "audio" / f"fold{fold}" / name, sr=sr, channels=ch)
    out = tmp_path / "out"
    rows = _check(prepare("us8k", tmp_path, out), 4)
    assert [r["fold"] for r in rows] == ["5", "5", "1", "10"] and rows[3]["label"] == "gun_shot"
    assert rows[0]["file_name"] == "audio/fold5/100032-3-0-0.wav" and (out / rows[0]["file_name"]).exists()
    assert rows[2]["file_name"].startswith("..")  # already 16 kHz mono: referenced in place, not copied
    assert sf.info(out / rows[1]["file_name"]).frames == 800  # 0.05 s at 16 kHz


def test_spcv2_uses_official_lists(tmp_path):
    src = tmp_path / "speech_commands_v0.02"
    clips = {"yes": ["0a7c2a8d_nohash_0.wav", "0b09edd3_nohash_0.wav", "0c2ca723_nohash_0.wav"],
             "no": ["0a7c2a8d_nohash_1.wav", "1b4c9b89_nohash_0.wav"], "backward": ["0165e0e8_nohash_0.wav"]}
    for word, names in clips.items():
        for name in names:
            _wav(src / word / name)
    _wav(src / "_background_noise_" / "white_noise.wav")
    (src / "validation_list.txt").write_text("yes/0b09edd3_nohash_0.wav\nno/1b4c9b89_nohash_0.wav\n")
    (src / "testing_list.txt").write_text("yes/0c2ca723_nohash_0.wav\n")
    rows = _check(prepare("spcv2", src, tmp_path / "out"), 6)
    split = {(r["label"], Path(r["file_name"]).name): r["split"] for r in rows}
    assert split[("yes", "0b09edd3_nohash_0.wav")] == "valid" and split[("yes", "0c2ca723_nohash_0.wav")] == "test"
    assert split[("backward", "0165e0e8_nohash_0.wav")] == "train"
    assert {r["label"] for r in rows} == {"yes", "no", "backward"}  # no _background_noise_
    assert not (tmp_path / "out" / "audio").exists()  # 16 kHz already: nothing copied


def test_vc1_iden_split(tmp_path):
    src = tmp_path / "voxceleb1"
    lines = ["1 id10001/1zcIwhmdeo4/00001.wav", "2 id10001/1zcIwhmdeo4/00002.wav", "3 id10001/7w0IBEWc9Qw/00001.wav",
             "1 id10002/0_laIeN-Q44/00001.wav", "3 id10002/6WO410QOeuo/00001.wav"]
    for i, line in enumerate(lines):
        _wav(src / ("vox1_dev_wav" if i < 3 else "vox1_test_wav") / "wav" / line.split()[1])
    (src / "iden_split.txt").write_text("\n".join(lines) + "\n")
    rows = _check(prepare("vc1", src, tmp_path / "out"), 5)
    assert [(r["label"], r["split"]) for r in rows] == [("id10001", "train"), ("id10001", "valid"),
                                                        ("id10001", "test"), ("id10002", "train"), ("id10002", "test")]
    (src / "iden_split.txt").write_text("\n".join(lines + ["1 id10003/x/00001.wav"]) + "\n")
    with pytest.raises(PrepareError, match="1 files of iden_split.txt not found"):
        prepare("vc1", src, tmp_path / "out2")


def test_voxforge_speaker_disjoint_and_stable(tmp_path):
    src = tmp_path / "voxforge"
    subs = ["alice-20100101-abc", "bob-20100102-xyz", "bob-20110305-qrs", "carl-20090909-c1", "dora-20120101-d",
            "anonymous-20100101-aaa", "anonymous-20100102-bbb"]
    for lang in ("de", "en", "fr"):
        for sub in subs:
            _wav(src / lang / sub / "wav" / "a0001.wav", sr=48000)
            _wav(src / lang / sub / "flac" / "a0002.flac", fmt="FLAC")
    out = tmp_path / "out"
    rows = _rows(prepare("voxforge", src, out))
    assert len(rows) == 42 and {r["label"] for r in rows} == {"de", "en", "fr"}
    assert all(_is_16k_mono(out / r["file_name"]) for r in rows)
    split_of = {}
    for r in rows:
        split_of.setdefault((r["label"], r["speaker"]), set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())  # speaker-disjoint
    assert ("de", "bob") in split_of and ("de", "anonymous-20100101-aaa") in split_of
    import shutil

    shutil.rmtree(src / "fr")  # the rule is per speaker: other data does not move anyone
    fewer = {(r["label"], r["speaker"]): r["split"] for r in _rows(prepare("voxforge", src, tmp_path / "out2"))}
    assert all(split_of[k] == {v} for k, v in fewer.items())


def test_cremad_speaker_disjoint_and_seeded(tmp_path):
    src = tmp_path / "CREMA-D"
    for actor in range(1001, 1021):
        for emo in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD"):
            _wav(src / "AudioWAV" / f"{actor}_IEO_{emo}_HI.wav")
    rows = _check(prepare("cremad", src, tmp_path / "out"), 120)
    split_of = {}
    for r in rows:
        split_of.setdefault(r["speaker"], set()).add(r["split"])
    assert all(len(s) == 1 for s in split_of.values())
    counts = {s: sum(1 for v in split_of.values() if v == {s}) for s in ("train", "valid", "test")}
    assert counts == {"train": 14, "valid": 2, "test": 4}
    assert {r["label"] for r in rows} == {"anger", "disgust", "fear", "happy", "neutral", "sad"}
    again = _rows(prepare("cremad", src, tmp_path / "again"))
    assert [r["split"] for r in again] == [r["split"] for r in rows]
    other = _rows(prepare("cremad", src, tmp_path / "other", seed=1))
    assert [r["split"] for r in other] != [r["split"] for r in rows]


def test_gtzan_needs_and_applies_split_lists(tmp_path):
    src = tmp_path / "gtzan" / "genres"
    for genre in ("blues", "jazz"):
        for i in range(3):
            _wav(src / genre / f"{genre}.0000{i}.au", sr=22050, fmt="AU")
    with pytest.raises(PrepareError, match="pass split_dir"):
        prepare("gtzan", tmp_path / "gtzan", tmp_path / "out")
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "train_filtered.txt").write_text("blues/blues.00000.wav\njazz/jazz.00000.wav\njazz/jazz.00001.wav\n")
    (lists / "valid_filtered.txt").write_text("blues/blues.00001.wav\n")
    (lists / "test_filtered.txt").write_text("blues/blues.00002.wav\njazz/jazz.00002.wav\n")
    rows = _check(prepare("gtzan", tmp_path / "gtzan", tmp_path / "out", split_dir=lists), 6)
    assert {(Path(r["file_name"]).stem, r["split"]) for r in rows} >= {("blues.00001", "valid"), ("jazz.00002", "test")}
    (lists / "test_filtered.txt").write_text("blues/blues.00002.wav\njazz/jazz.00009.wav\n")
    with pytest.raises(PrepareError, match="1 listed clips not found"):
        prepare("gtzan", tmp_path / "gtzan", tmp_path / "out", split_dir=lists)


def test_nsynth_official_folders(tmp_path):
    src = tmp_path / "nsynth"
    notes = {"train": [("bass_synthetic_033-022-050", "bass"), ("guitar_acoustic_010-060-100", "guitar")],
             "valid": [("keyboard_electronic_001-021-127", "keyboard")],
             "test": [("bass_electronic_018-022-100", "bass")]}
    for split, items in notes.items():
        meta = {}
        for note, family in items:
            _wav(src / f"nsynth-{split}" / "audio" / f"{note}.wav")
            meta[note] = {"note_str": note, "instrument_family_str": family, "pitch": 22, "velocity": 50}
        (src / f"nsynth-{split}" / "examples.json").write_text(json.dumps(meta))
    rows = _check(prepare("nsynth", src, tmp_path / "out"), 4)
    assert [(r["label"], r["split"]) for r in rows] == [("bass", "train"), ("guitar", "train"),
                                                        ("keyboard", "valid"), ("bass", "test")]
    (src / "nsynth-test" / "examples.json").unlink()
    with pytest.raises(PrepareError, match="NSynth test examples.json not found"):
        prepare("nsynth", src, tmp_path / "out")


def test_fsd50k_multilabel(tmp_path):
    src = tmp_path / "fsd50k"
    gt = src / "FSD50K.ground_truth"
    gt.mkdir(parents=True)
    (gt / "vocabulary.csv").write_text("0,Accelerating_and_revving_and_vroom,/m/07q2z82\n1,Bark,/m/05tny_\n"
                                       "2,Dog,/m/0bt9lr\n")
    with open(gt / "dev.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fname", "labels", "mids", "split"])
        w.writerow([64760, "Bark,Dog", "/m/05tny_,/m/0bt9lr", "train"])
        w.writerow([16399, "Accelerating_and_revving_and_vroom", "/m/07q2z82", "val"])
        w.writerow([16401, "Dog", "/m/0bt9lr", "train"])
    with open(gt / "eval.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fname", "labels", "mids"])
        w.writerow([37199, "Bark,Dog", "/m/05tny_,/m/0bt9lr"])
    for name in ("64760", "16399", "16401"):
        _wav(src / "FSD50K.dev_audio" / f"{name}.wav", sr=44100)
    _wav(src / "FSD50K.eval_audio" / "37199.wav", sr=44100)
    csv_path = prepare("fsd50k", src, tmp_path / "out")
    rows = _check(csv_path, 4)
    assert [(r["label"], r["split"]) for r in rows][:2] == [("Bark,Dog", "train"),
                                                            ("Accelerating_and_revving_and_vroom", "valid")]
    task = load_task(csv_path)
    assert task.metric == "mAP" and task.targets().sum() == 6
    with open(gt / "eval.csv", "a", newline="") as f:
        csv.writer(f).writerow([1, "Meow", "/m/x"])
    with pytest.raises(PrepareError, match="not in vocabulary.csv"):
        prepare("fsd50k", src, tmp_path / "out")


def test_unreadable_files_are_skipped_and_listed(tmp_path):
    src = tmp_path / "CREMA-D" / "AudioWAV"
    for actor in range(1001, 1011):
        _wav(src / f"{actor}_IEO_ANG_HI.wav")
    (src / "1011_IEO_SAD_XX.wav").write_bytes(b"not audio")
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / "cremad.skipped.txt").symlink_to(victim)  # a placed link is replaced, never written through
    rows = _rows(prepare("cremad", tmp_path / "CREMA-D", out))
    assert len(rows) == 10
    assert (out / "cremad.skipped.txt").read_text().strip().endswith("1011_IEO_SAD_XX.wav")
    assert victim.read_text() == "precious" and not (out / "cremad.skipped.txt").is_symlink()


def test_unknown_task_and_missing_source(tmp_path):
    with pytest.raises(PrepareError, match="no preparer"):
        prepare("imagenet", tmp_path, tmp_path / "out")
    with pytest.raises(PrepareError, match="source folder not found"):
        prepare("esc50", tmp_path / "nope", tmp_path / "out")
    with pytest.raises(PrepareError, match="esc50.csv"):
        prepare("esc50", tmp_path, tmp_path / "out")


def test_num_workers_zero_runs_in_this_thread_and_negative_is_refused(tmp_path, monkeypatch):
    """`num_workers` used to be raised to 1 whatever it was: 0 now converts in the calling thread, a negative
    count is an error before any work."""
    import threading

    from byola.evaluation import prepare as prep

    src = _esc50_source(tmp_path, [(f"{1 + i % 2}-{i}-A-{i}.wav", 1 + i % 2, i, f"class{i}") for i in range(4)])
    for bad in (-1, -4):
        with pytest.raises(PrepareError, match=f"num_workers must be 0 .* or a positive integer, got {bad}"):
            prepare("esc50", src, tmp_path / "bad", num_workers=bad)
    assert not (tmp_path / "bad").exists()
    threads = []
    original = prep.to_16k
    monkeypatch.setattr(prep, "to_16k", lambda s, d: (threads.append(threading.get_ident()), original(s, d)))
    _check(prepare("esc50", src, tmp_path / "out", num_workers=0), 4)
    assert threads == [threading.get_ident()] * 4
