"""Official dataset layouts → an EVAR-style metadata CSV (``OUT/<task>.csv``) plus 16 kHz mono copies where needed.

``prepare(task, src_dir, out_dir)`` writes ``out_dir/<task>.csv`` whose ``file_name`` is relative to ``out_dir``:
files that already are 16 kHz mono are referenced in place (relative path into ``src_dir``), the others are
decoded with soundfile, averaged to mono, resampled with torchaudio and written as 16-bit WAV under ``out_dir``
(atomically; existing copies are kept, so an interrupted run resumes). Unreadable or empty files are skipped and
listed in ``out_dir/<task>.skipped.txt``. Point a built-in task at it with ``data_root``: ``OUT = ROOT/<task>``.

Split rules that are ours (the datasets ship none) are documented on their functions: ``voxforge`` and
``cremad``. GTZAN's fault-filtered split is not bundled: pass its three list files (``split_dir``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
import torch
import torchaudio
from tqdm.auto import tqdm

from byola.errors import UsageError
from byola.files import atomic_write_text, atomic_write_with, atomic_writer

SAMPLE_RATE = 16000
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".au", ".aiff", ".aif", ".mp3")
CREMAD_EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
GTZAN_GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae", "rock")


class PrepareError(UsageError):
    """The source folder does not have the dataset's expected layout; the message says what is missing."""


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise PrepareError(f"{what} not found: {path}")
    return path


def _find(src: Path, name: str, what: str) -> Path:
    """``src/name`` or the first match below ``src`` (archives often add a top folder)."""
    if (src / name).exists():
        return src / name
    hits = sorted(src.rglob(name))
    if not hits:
        raise PrepareError(f"{what} ({name}) not found under {src}")
    return hits[0]


def to_16k(src: Path, dst: Path) -> None:
    """Decode ``src`` (soundfile), mix to mono, resample to 16 kHz (torchaudio) and write ``dst`` atomically."""
    wave, sr = sf.read(src, dtype="float32", always_2d=True)
    mono = torch.from_numpy(wave.mean(axis=1))
    if sr != SAMPLE_RATE:
        mono = torchaudio.functional.resample(mono, sr, SAMPLE_RATE)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(dst, lambda tmp: sf.write(tmp, mono.clamp(-1, 1).numpy(), SAMPLE_RATE, subtype="PCM_16",
                                                format="WAV"))


def _place(src: Path, out_dir: Path, copy_rel: str) -> str | None:
    """CSV path of ``src``: in place when 16 kHz mono, else a converted copy at ``out_dir/copy_rel`` (.wav).
    None when the file cannot be read or holds no samples."""
    try:
        info = sf.info(src)
    except (RuntimeError, sf.LibsndfileError):
        return None
    if info.frames == 0:
        return None
    if info.samplerate == SAMPLE_RATE and info.channels == 1:
        return os.path.relpath(src.resolve(), out_dir.resolve())
    rel = str(Path(copy_rel).with_suffix(".wav"))
    if not (out_dir / rel).exists():
        to_16k(src, out_dir / rel)
    return rel


def _write(task: str, out_dir: Path, entries: list[tuple[Path, str, dict]], num_workers: int) -> Path:
    """Place every (source file, copy path, row) with ``num_workers`` threads (0: in this thread) and write
    ``out_dir/<task>.csv`` (+ skipped list)."""
    out_dir.mkdir(parents=True, exist_ok=True)

    def place(entry: tuple[Path, str, dict]) -> str | None:
        return _place(entry[0], out_dir, entry[1])

    with ThreadPoolExecutor(max(num_workers, 1)) as pool:  # its threads start on first use: none for 0
        placed = list(tqdm((pool.map if num_workers else map)(place, entries), total=len(entries),
                           desc=f"prepare {task}", unit="file"))
    rows = [{"file_name": p, **row} for p, (_, _, row) in zip(placed, entries) if p is not None]
    skipped = [str(src) for p, (src, _, _) in zip(placed, entries) if p is None]
    if not rows:
        raise PrepareError(f"{task}: no readable audio found")
    skipped_path = out_dir / f"{task}.skipped.txt"
    if skipped:
        atomic_write_text(skipped_path, "\n".join(skipped) + "\n")
    elif skipped_path.exists():
        skipped_path.unlink()
    path = out_dir / f"{task}.csv"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with atomic_writer(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def prepare_esc50(src: Path) -> list[tuple[Path, str, dict]]:
    """ESC-50: ``meta/esc50.csv`` (filename, fold, category, ...) and ``audio/*.wav`` (44.1 kHz); official folds."""
    meta = _find(src, "esc50.csv", "ESC-50 metadata")
    audio = _need(meta.parent.parent / "audio", "ESC-50 audio folder")
    with open(meta, newline="") as f:
        return [(audio / r["filename"], f"audio/{r['filename']}", {"label": r["category"], "fold": int(r["fold"])})
                for r in csv.DictReader(f)]


def prepare_us8k(src: Path) -> list[tuple[Path, str, dict]]:
    """UrbanSound8K: ``metadata/UrbanSound8K.csv`` and ``audio/fold{1..10}/``; official 10 folds."""
    meta = _find(src, "UrbanSound8K.csv", "UrbanSound8K metadata")
    audio = _need(meta.parent.parent / "audio", "UrbanSound8K audio folder")
    with open(meta, newline="") as f:
        return [(audio / f"fold{r['fold']}" / r["slice_file_name"], f"audio/fold{r['fold']}/{r['slice_file_name']}",
                 {"label": r["class"], "fold": int(r["fold"])}) for r in csv.DictReader(f)]


def prepare_spcv2(src: Path) -> list[tuple[Path, str, dict]]:
    """Speech Commands v2: one folder per word (35; ``_background_noise_`` ignored) and the official
    ``validation_list.txt`` / ``testing_list.txt``; every other clip is train."""
    root = _find(src, "testing_list.txt", "Speech Commands testing list").parent
    lists = {s: set((_need(root / f"{n}_list.txt", f"Speech Commands {n} list")).read_text().split())
             for s, n in [("valid", "validation"), ("test", "testing")]}
    entries = []
    for word_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("_")):
        for wav in sorted(word_dir.glob("*.wav")):
            rel = f"{word_dir.name}/{wav.name}"
            split = "valid" if rel in lists["valid"] else "test" if rel in lists["test"] else "train"
            entries.append((wav, f"audio/{rel}", {"label": word_dir.name, "split": split,
                                                  "speaker": wav.name.split("_")[0]}))
    return entries


def prepare_vc1(src: Path) -> list[tuple[Path, str, dict]]:
    """VoxCeleb1 identification: ``iden_split.txt`` (``1|2|3 id10001/VIDEO/00001.wav`` = train/valid/test) and
    the wav tree (``wav/``, or ``vox1_dev_wav/wav`` + ``vox1_test_wav/wav``); label = speaker id."""
    split_file = _find(src, "iden_split.txt", "VoxCeleb1 iden_split.txt")
    roots = [r for r in (src / "wav", src / "vox1_dev_wav" / "wav", src / "vox1_test_wav" / "wav", src) if r.is_dir()]
    names = {"1": "train", "2": "valid", "3": "test"}
    entries, missing = [], []
    for line in split_file.read_text().splitlines():
        if not line.strip():
            continue
        code, rel = line.split()
        path = next((r / rel for r in roots if (r / rel).exists()), None)
        if path is None:
            missing.append(rel)
            continue
        entries.append((path, f"audio/{rel}", {"label": rel.split("/")[0], "split": names[code]}))
    if missing:
        raise PrepareError(f"VoxCeleb1: {len(missing)} files of iden_split.txt not found under {roots}, e.g. "
                           + ", ".join(missing[:5]))
    return entries


def _bucket(key: str) -> int:
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 100


def prepare_voxforge(src: Path) -> list[tuple[Path, str, dict]]:
    """VoxForge language identification from ``SRC/<language>/<submission>/{wav,flac}/*`` (each language's
    submission archives extracted into a folder named by its language code; label = that code).

    Split rule (ours; speaker-disjoint, stable when submissions are added): the speaker is the user name before
    the first ``-`` of the submission folder (``anonymous`` submissions count as one speaker each, keyed by the
    whole folder name); ``sha1(language/speaker) % 100`` < 10 → test, < 20 → valid, else train.
    """
    entries = []
    for lang in sorted(p for p in src.iterdir() if p.is_dir()):
        for sub in sorted(p for p in lang.iterdir() if p.is_dir()):
            user = sub.name.split("-")[0]
            speaker = sub.name if user.lower() == "anonymous" else user
            b = _bucket(f"{lang.name}/{speaker}")
            split = "test" if b < 10 else "valid" if b < 20 else "train"
            for f in sorted(p for p in sub.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES):
                rel = f.relative_to(src)
                entries.append((f, f"audio/{rel}", {"label": lang.name, "split": split, "speaker": speaker}))
    if not entries:
        raise PrepareError(f"VoxForge: no audio under {src}/<language>/<submission>/")
    return entries


def prepare_cremad(src: Path, seed: int = 0,
                   fractions: tuple[float, float] = (0.7, 0.1)) -> list[tuple[Path, str, dict]]:
    """CREMA-D emotion (6 classes) from ``AudioWAV/<actor>_<sentence>_<EMO>_<level>.wav``.

    Split rule (ours; speaker-disjoint): the sorted actor ids are shuffled with ``numpy.random.default_rng(seed)``
    (seed 0 by default); the first ``round(0.7 n)`` actors are train, the next ``round(0.1 n)`` valid, the rest test.
    """
    folder = src / "AudioWAV" if (src / "AudioWAV").is_dir() else src
    files = sorted(folder.glob("*.wav"))
    if not files:
        raise PrepareError(f"CREMA-D: no AudioWAV/*.wav under {src}")
    actors = sorted({f.name.split("_")[0] for f in files})
    order = np.random.default_rng(seed).permutation(actors)
    n_train, n_valid = round(fractions[0] * len(actors)), round(fractions[1] * len(actors))
    split = {a: "train" if i < n_train else "valid" if i < n_train + n_valid else "test" for i, a in enumerate(order)}
    entries = []
    for f in files:
        parts = f.stem.split("_")
        if len(parts) != 4 or parts[2] not in CREMAD_EMOTIONS:
            raise PrepareError(f"CREMA-D: unexpected file name {f.name}")
        entries.append((f, f"audio/{f.name}", {"label": CREMAD_EMOTIONS[parts[2]], "split": split[parts[0]],
                                                 "speaker": parts[0]}))
    return entries


def prepare_gtzan(src: Path, split_dir: str | os.PathLike | None = None) -> list[tuple[Path, str, dict]]:
    """GTZAN genre with the fault-filtered split (Kereliuk et al. 2015; as used by EVAR), which is not bundled here.

    ``split_dir`` must hold ``train_filtered.txt``, ``valid_filtered.txt`` and ``test_filtered.txt`` (one clip per
    line, e.g. ``blues/blues.00012.wav``; matched by file stem, so ``.au``/``.wav`` both work). Audio: any
    ``<genre>/<genre>.NNNNN.{au,wav}`` below ``src`` (``genres/`` or ``genres_original/``). Clips on no list are
    left out (that is the filtering).
    """
    if split_dir is None:
        raise PrepareError("GTZAN: pass split_dir, a folder with train_filtered.txt, valid_filtered.txt and "
                           "test_filtered.txt (the fault-filtered split; not bundled with byola)")
    split_of = {}
    for split in ("train", "valid", "test"):
        for line in _need(Path(split_dir) / f"{split}_filtered.txt", "GTZAN split list").read_text().split():
            split_of[Path(line).stem] = split
    audio = {f.stem: f for f in src.rglob("*") if f.suffix.lower() in AUDIO_SUFFIXES
             and f.parent.name in GTZAN_GENRES}
    missing = sorted(set(split_of) - set(audio))
    if missing:
        raise PrepareError(f"GTZAN: {len(missing)} listed clips not found under {src}, e.g. {missing[:5]}")
    return [(audio[s], f"audio/{audio[s].parent.name}/{s}.wav", {"label": audio[s].parent.name, "split": sp})
            for s, sp in sorted(split_of.items())]


def prepare_nsynth(src: Path) -> list[tuple[Path, str, dict]]:
    """NSynth instrument family (11 classes): ``nsynth-{train,valid,test}/examples.json`` + ``audio/*.wav``;
    the official split by folder."""
    entries = []
    for split in ("train", "valid", "test"):
        folder = _need(src / f"nsynth-{split}", f"NSynth {split} folder")
        meta = json.loads(_need(folder / "examples.json", f"NSynth {split} examples.json").read_text())
        for note, m in sorted(meta.items()):
            entries.append((folder / "audio" / f"{note}.wav", f"audio/{split}/{note}.wav",
                            {"label": m["instrument_family_str"], "split": split}))
    return entries


def prepare_fsd50k(src: Path) -> list[tuple[Path, str, dict]]:
    """FSD50K multi-label (200 classes): ``FSD50K.ground_truth/{dev,eval,vocabulary}.csv`` with
    ``FSD50K.{dev,eval}_audio/``; dev's own train/val column gives train/valid, eval is test."""
    gt = _find(src, "FSD50K.ground_truth", "FSD50K ground truth folder")
    base = gt.parent
    with open(_need(gt / "vocabulary.csv", "FSD50K vocabulary"), newline="") as f:
        vocabulary = {row[1] for row in csv.reader(f) if len(row) >= 2}
    entries = []
    for name, audio in (("dev", "FSD50K.dev_audio"), ("eval", "FSD50K.eval_audio")):
        with open(_need(gt / f"{name}.csv", f"FSD50K {name}.csv"), newline="") as f:
            for r in csv.DictReader(f):
                labels = r["labels"].split(",")
                unknown = set(labels) - vocabulary
                if unknown:
                    raise PrepareError(f"FSD50K: {name}.csv clip {r['fname']} has labels not in vocabulary.csv: "
                                       f"{sorted(unknown)}")
                split = "test" if name == "eval" else {"train": "train", "val": "valid"}[r["split"]]
                entries.append((base / audio / f"{r['fname']}.wav", f"audio/{name}/{r['fname']}.wav",
                                {"label": ",".join(labels), "split": split}))
    return entries


PREPARERS: dict[str, Callable[..., list[tuple[Path, str, dict]]]] = {
    "esc50": prepare_esc50, "us8k": prepare_us8k, "spcv2": prepare_spcv2, "vc1": prepare_vc1,
    "voxforge": prepare_voxforge, "cremad": prepare_cremad, "gtzan": prepare_gtzan, "nsynth": prepare_nsynth,
    "fsd50k": prepare_fsd50k}


def prepare(task: str, src_dir: str | os.PathLike, out_dir: str | os.PathLike, num_workers: int = 4,
            **options) -> Path:
    """Turn the dataset at ``src_dir`` (its official layout) into ``out_dir/<task>.csv`` (+ 16 kHz copies) with
    ``num_workers`` threads converting audio (0: in the calling thread); ``options`` go to the dataset's function
    (``gtzan``: ``split_dir``; ``cremad``: ``seed``). Returns the CSV."""
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise PrepareError(f"num_workers must be 0 (convert in this thread) or a positive integer, got "
                           f"{num_workers!r}")
    if task not in PREPARERS:
        raise PrepareError(f"no preparer for {task!r}; known: {', '.join(PREPARERS)}")
    src = _need(Path(src_dir), f"{task} source folder")
    entries = PREPARERS[task](src, **options)
    missing = [str(e[0]) for e in entries if not e[0].exists()]
    if missing:
        raise PrepareError(f"{task}: {len(missing)} audio files named by the metadata are missing, e.g. "
                           + ", ".join(missing[:5]))
    return _write(task, Path(out_dir), entries, num_workers)
