"""Build the open pretraining corpus of byola's default model from audio that is free to use, modify and redistribute
(Debian packages and the OLPC Berklee library), with a manifest recording every segment's source, licence,
attribution and content hash. See DATA_CARD.md beside this file.

    # once, as root (or print the line with --print-apt):
    python pretrained/corpus/build.py --apt
    # build (about 15 minutes on one shared core; rerun after an interruption: finished sources are kept):
    python pretrained/corpus/build.py --out /work/corpus --berklee ../shared/data/berklee_unlabeled/audio \\
        --eval_data ../shared/data

Output, in ``--out`` (keep it outside the repository: the audio is not part of the project):
- ``SOURCE/....flac``: 16 kHz mono 16-bit FLAC segments of at most ``--segment_sec`` seconds (longer files are cut
  into consecutive segments; segments quieter than ``--silence_rms`` are dropped);
- ``manifest.csv``: segment, source, package_version, original_file, start_s, duration_s, domain (speech, music,
  sound), licence, attribution, sha256 (of the segment's 16-bit PCM);
- ``train_<mix>.txt``: file lists for ``byola pretrain`` (one segment path a line), per mix in :data:`MIXES`;
- ``excluded.csv``: files dropped because they match an evaluation clip (by name or by decoded-content hash), or
  are empty or unreadable.

Balance: ``byola pretrain`` draws one random crop per listed file per epoch, so a domain's weight in training is
its number of listed segments, not its duration. Music sources are capped at ``--max_segments_music`` segments each
(chosen at random, seeded) and every mix in :data:`MIXES` samples segments per domain to a fixed share.

Evaluation clips are never included: every candidate file's name is compared with the clips of the evaluation tasks
under ``--eval_data`` (fsdd, spcv2_12, esc50_f4), every file shorter than a segment (the clips are) by sha256 of its
decoded 16-bit PCM at the native sample rate and at 16 kHz, and each written segment's hash is checked against the
clips' 16 kHz hashes.
"""
from __future__ import annotations

import argparse
import csv
import fnmatch
import functools
import hashlib
import io
import json
import random
import re
import subprocess
import sys
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from byola.audio import AUDIO_EXTENSIONS, resample
from byola.files import atomic_write_text, atomic_writer

SAMPLE_RATE = 16000
DOC = Path("/usr/share/doc")


@dataclass(frozen=True)
class Source:
    """One package (or folder) of audio. ``files`` are glob patterns of installed paths (``zip:`` patterns name
    members of the ``.pk3``/zip archives they match); ``licence``/``attribution`` are fixed values for packages whose
    copyright file is not machine-readable (checked by hand, see DATA_CARD.md), or None to read them per file from
    the package's DEP-5 copyright file."""

    name: str
    domain: str
    files: tuple[str, ...]
    licence: str | None = None
    attribution: str | None = None
    exclude: tuple[str, ...] = ()
    tree: tuple[str, str] = ("", "")   # (installed prefix, source-tree prefix): maps a file to the copyright's paths


AST = "/usr/share/asterisk/sounds"
GAMES = "/usr/share/games"
# Every package below was installed and its /usr/share/doc/PKG/copyright read (DATA_CARD.md quotes the terms).
# Left out: drascula-music (licence allows free distribution but grants no right to modify / make derived works),
# fb-music-high (one tracker module, .xm, no decoder here), xblast-tnt-sounds (headerless .raw of unknown format),
# openttd-opensfx, kobodeluxe-data, neverball-data, asterisk-prompt-es-co and -fr-armelle (no audio file this script
# decodes: packed or GSM formats).
SOURCES: tuple[Source, ...] = (
    # asterisk-core-sounds: one DEP-5 file for all languages, its Files patterns name the upstream tarballs, so
    # the licence of each language package is written here (copyright file: en/es Allison Smith, fr June Wallack,
    # it Carlo Flora, ru Maxim Topal)
    Source("asterisk-core-sounds-en-wav", "speech", (f"{AST}/en_US_f_Allison/**/*.wav",), "CC-BY-SA-3.0",
           "Allison Smith (recorded), Digium, Inc., 2003-2010 (Asterisk core sounds)"),
    Source("asterisk-core-sounds-es-wav", "speech", (f"{AST}/es_MX_f_Allison/**/*.wav",), "CC-BY-SA-3.0",
           "Allison Smith (recorded), Digium, Inc., 2003-2010 (Asterisk core sounds)"),
    Source("asterisk-core-sounds-fr-wav", "speech", (f"{AST}/fr_CA_f_June/**/*.wav",), "CC-BY-SA-3.0",
           "June Wallack (recorded), 2006-2008; translation Clod Patry, Kristopher Lalletti (Asterisk core sounds)"),
    Source("asterisk-core-sounds-it-wav", "speech", (f"{AST}/it_IT_m_Carlo/**/*.wav",), "CC-BY-3.0",
           "Carlo Flora (recorded), 2012; translation Silvia Petrin (Asterisk core sounds)"),
    Source("asterisk-core-sounds-ru-wav", "speech", (f"{AST}/ru_RU_f_IvrvoiceRU/**/*.wav",), "CC-BY-3.0",
           "Maxim Topal (ivrvoice.ru), 2010 (Asterisk core sounds)"),
    Source("asterisk-prompt-it-menardi-wav", "speech", (f"{AST}/it_IT_f_Menardi/**/*.wav",), "CC-BY-SA-3.0",
           "Marco Menardi and Paola Dal Zot (voice), 2006-2011"),
    Source("klettres-data", "speech", ("/usr/share/klettres/**/*.ogg",)),        # spoken letters and syllables
    Source("ktuberling-data", "speech", ("/usr/share/ktuberling/sounds/**/*.ogg",)),  # spoken words
    Source("asterisk-moh-opsound-wav", "music", ("/usr/share/asterisk/moh/*.wav",), "CC-BY-SA-3.0",
           "Paul Shuler (Macroform), Manolo Camp, Reno Project (asterisk-moh-opsound)"),
    Source("wesnoth-1.16-music", "music", (f"{GAMES}/wesnoth/1.16/data/core/music/*.ogg",), "GPL-2",
           "The Battle for Wesnoth project (David White and contributors)"),
    Source("warzone2100-music", "music", (f"{GAMES}/warzone2100/music/**/*.opus",)),
    Source("ufoai-music", "music", (f"zip:{GAMES}/ufoai/base/0music.pk3:music/*.ogg",), tree=("music/", "base/music/")),
    Source("nexuiz-music", "music", (f"zip:{GAMES}/nexuiz/data/music.pk3:sound/cdtracks/*.ogg",), "GPL-2+",
           "Alientrap (Nexuiz), 2002-2009"),
    Source("singularity-music", "music", (f"{GAMES}/singularity/music/*.ogg",), "CC-BY-SA-3.0",
           "Max McCracken, 2007-2012 (Endgame: Singularity)"),
    Source("planetblupi-music-ogg", "music", ("/usr/share/planetblupi/music/*.ogg",)),
    Source("asc-music", "music", (f"{GAMES}/asc/music/*.mp3",)),
    Source("colobot-common-sounds", "music", (f"{GAMES}/colobot/music/*.ogg",)),
    Source("hedgewars-data", "music", (f"{GAMES}/hedgewars/Data/Music/*.ogg",),
           tree=(f"{GAMES}/hedgewars/", "share/hedgewars/")),
    Source("colobot-common-sounds", "sound", (f"{GAMES}/colobot/sounds/*.wav",)),
    Source("hedgewars-data", "sound", (f"{GAMES}/hedgewars/Data/Sounds/**/*.ogg",),  # effects and voiced shouts
           tree=(f"{GAMES}/hedgewars/", "share/hedgewars/")),
    Source("frozen-bubble-data", "sound", (f"{GAMES}/frozen-bubble/snd/*.ogg",), exclude=("*/snd/*music*",)),
    Source("chromium-bsu-data", "sound", (f"{GAMES}/chromium-bsu/wav/*.wav",), "Expat",
           "Brian Redfern, 2008 (Chromium B.S.U. sounds)"),
    Source("pingus-data", "sound", (f"{GAMES}/pingus/data/sounds/*.wav",), "GPL-2+",
           "Ingo Ruhnke and the Pingus developers, 1999-2007"),
    Source("lbreakout2-data", "sound", (f"{GAMES}/lbreakout2/**/*.wav",), "GPL-2+", "Michael Speck, 2000"),
    Source("sound-theme-freedesktop", "sound", ("/usr/share/sounds/freedesktop/stereo/*.oga",),
           tree=("/usr/share/sounds/freedesktop/", "")),
)

# Training mixes: share of listed segments per domain (every segment of the smallest share is used once).
MIXES: dict[str, dict[str, float]] = {
    "all": {},                                          # every segment once
    "balanced": {"speech": 0.45, "sound": 0.35, "music": 0.20},
}


# ----------------------------------------------------------------------------------------------- licences
def dep5_stanzas(package: str) -> list[dict[str, str]]:
    """The paragraphs of a machine-readable (DEP-5) copyright file as {field: value} (continuation lines joined with
    newlines); [] when the file is not DEP-5."""
    text = (DOC / package / "copyright").read_text(errors="replace")
    if not text.startswith("Format:"):
        return []
    stanzas = []
    for block in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        key = None
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        stanzas.append(fields)
    return stanzas


def dep5_licence(package: str, path: str) -> tuple[str, str] | None:
    """(licence, copyright) of the last ``Files:`` paragraph whose pattern matches ``path`` (a path of the source
    tree; DEP-5: ``*`` matches ``/`` too and the last match wins), or None when none does (the file's licence is
    unknown: leave it out)."""
    found = None
    for st in dep5_stanzas(package):
        if "Files" in st and "License" in st and any(fnmatch.fnmatchcase(path, p) for p in st["Files"].split()):
            found = (st["License"].split("\n")[0].strip(), " ".join(st.get("Copyright", "").split()))
    return found


@functools.cache
def package_version(package: str) -> str:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


# ------------------------------------------------------------------------------------------------- audio
def pcm16(wave: np.ndarray) -> np.ndarray:
    return np.round(np.clip(wave, -1.0, 1.0) * 32767.0).astype("<i2")


def sha256_pcm(wave: np.ndarray) -> str:
    return hashlib.sha256(pcm16(wave).tobytes()).hexdigest()


def decode(path: str) -> tuple[np.ndarray, int]:
    """Whole file as float32 mono at its native rate."""
    with sf.SoundFile(path) as f:
        wave = f.read(dtype="float32", always_2d=True)
        return wave.mean(axis=1), f.samplerate


def to_16k(wave: np.ndarray, sr: int) -> np.ndarray:
    return resample(torch.from_numpy(np.ascontiguousarray(wave)), sr, SAMPLE_RATE).numpy()


def eval_fingerprints(eval_data: Path) -> tuple[set[str], set[str]]:
    """(names, hashes) of every clip of the evaluation tasks: lower-case file stems, and sha256 of the decoded PCM at
    the native rate and at 16 kHz."""
    names, hashes = set(), set()
    files = [p for task in ("fsdd", "spcv2_12", "esc50_f4") for p in sorted((eval_data / task).rglob("*"))
             if p.suffix.lower() in AUDIO_EXTENSIONS]
    if not files:
        raise SystemExit(f"no evaluation clips under {eval_data}: pass --eval_data (fsdd, spcv2_12, esc50_f4)")
    for p in tqdm(files, desc="hashing evaluation clips", unit="clip", mininterval=30):
        wave, sr = decode(str(p))
        names.add(p.stem.lower())
        hashes.update({sha256_pcm(wave), sha256_pcm(to_16k(wave, sr))})
    return names, hashes


# ------------------------------------------------------------------------------------------------ listing
@dataclass
class Candidate:
    source: Source
    original: str        # installed path, or "archive.pk3:member"
    licence: str
    attribution: str

    def read(self) -> bytes | str:
        if ":" in self.original[1:]:
            archive, member = self.original.split(":", 1)
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        return self.original


def tree_path(src: Source, path: str) -> str:
    """The source-tree path of an installed file (or archive member) as the copyright file names it."""
    path = path.split(":", 1)[-1] if path.count(":") else path
    installed, tree = src.tree
    return tree + path[len(installed):] if installed and path.startswith(installed) else path


def list_source(src: Source) -> list[Candidate]:
    """The source's installed files (and archive members) with their licence; files the copyright file does not
    cover are left out (counted on stderr)."""
    paths: list[str] = []
    for pattern in src.files:
        if pattern.startswith("zip:"):
            archive, member_glob = pattern[4:].split(":", 1)
            if Path(archive).exists():
                with zipfile.ZipFile(archive) as z:
                    paths += [f"{archive}:{m}" for m in sorted(z.namelist()) if fnmatch.fnmatch(m, member_glob)]
        else:
            root = Path(pattern.split("*")[0])
            rest = pattern[len(str(root)):].lstrip("/")
            paths += [str(p) for p in sorted(root.glob(rest))] if root.exists() else []
    paths = [p for p in paths if not any(fnmatch.fnmatch(p, x) for x in src.exclude)]
    out, unknown = [], 0
    for p in paths:
        if src.licence is not None:
            out.append(Candidate(src, p, src.licence, src.attribution or ""))
        elif found := dep5_licence(src.name, tree_path(src, p)):
            out.append(Candidate(src, p, *found))
        else:
            unknown += 1
    if unknown:
        print(f"{src.name}: {unknown} of {len(paths)} files left out: not covered by the copyright file",
              file=sys.stderr)
    return out


def berklee_source(folder: Path) -> list[Candidate]:
    src = Source("berklee_unlabeled", "sound", (), "CC-BY-3.0",
                 "Berklee College of Music for One Laptop per Child (OLPC sound library)")
    return [Candidate(src, str(p), src.licence, src.attribution) for p in sorted(folder.rglob("*"))
            if p.suffix.lower() in AUDIO_EXTENSIONS]


ALLOWED_LICENCES = ("CC-BY-3.0", "CC-BY-SA-3.0", "GPL-2", "GPL-2+", "GPL-3+", "GFDL-1.3", "CC0-1.0",
                    "public-domain", "Expat", "Clarified-Artistic")


def segment_name(c: Candidate, start: float) -> str:
    rel = re.sub(r"[^A-Za-z0-9._-]+", "_", c.original.split(":", 1)[-1].lstrip("/"))
    return f"{c.source.name}/{Path(rel).stem}__{int(round(start * 1000)):08d}ms.flac"


def plan_segments(c: Candidate, segment_sec: float) -> tuple[int, list[int]] | str:
    """(sample rate, start frames of the file's consecutive segments) from the header, or the reason it cannot be
    read."""
    try:
        with sf.SoundFile(io.BytesIO(c.read()) if c.original.count(":") else c.original) as f:
            if f.frames <= 0:
                return "empty"
            return f.samplerate, list(range(0, f.frames, int(segment_sec * f.samplerate)))
    except sf.LibsndfileError as e:
        return f"unreadable: {e}"


def read_segment(c: Candidate, start: int, frames: int) -> tuple[np.ndarray, int]:
    """Frames ``[start, start + frames)`` of a file as float32 mono at its native rate (decodes only those)."""
    with sf.SoundFile(io.BytesIO(c.read()) if c.original.count(":") else c.original) as f:
        f.seek(start)
        return f.read(frames, dtype="float32", always_2d=True).mean(axis=1), f.samplerate


def build_source(cands: list[Candidate], domain: str, out: Path, eval_names: set[str], eval_hashes: set[str],
                 args: argparse.Namespace, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """Segments of one source: planned from the headers, music capped at ``--max_segments_music`` (random), then
    only the chosen segments decoded, checked against the evaluation clips, and written."""
    excluded, plan = [], []
    for c in cands:
        stem = Path(c.original.split(":", 1)[-1]).stem.lower()
        info = plan_segments(c, args.segment_sec)
        if isinstance(info, str) or stem in eval_names:
            excluded.append({"source": c.source.name, "original_file": c.original,
                             "reason": "name" if stem in eval_names else info})
            continue
        sr, starts = info
        plan += [(c, sr, start) for start in starts]
    if domain == "music" and len(plan) > args.max_segments_music:
        plan = rng.sample(plan, args.max_segments_music)
    plan.sort(key=lambda x: (x[0].original, x[2]))
    rows = []
    for c, sr, start in tqdm(plan, desc=f"{cands[0].source.name} ({domain})", unit="segment", mininterval=30):
        wave, sr = read_segment(c, start, int(args.segment_sec * sr))
        piece = to_16k(wave, sr)
        if start == 0 and len(wave) < args.segment_sec * sr:  # a whole file (evaluation clips are all shorter)
            if sha256_pcm(wave) in eval_hashes or sha256_pcm(piece) in eval_hashes:
                excluded.append({"source": c.source.name, "original_file": c.original, "reason": "content hash"})
                continue
        if len(piece) < int(args.min_sec * SAMPLE_RATE) or np.sqrt(np.mean(piece ** 2)) < args.silence_rms:
            continue
        digest = sha256_pcm(piece)
        if digest in eval_hashes:
            excluded.append({"source": c.source.name, "original_file": c.original, "reason": "segment hash"})
            continue
        row = {"segment": segment_name(c, start / sr), "source": c.source.name,
               "package_version": package_version(c.source.name) if c.source.name != "berklee_unlabeled" else "",
               "original_file": c.original, "start_s": round(start / sr, 3),
               "duration_s": round(len(piece) / SAMPLE_RATE, 3), "domain": domain, "licence": c.licence,
               "attribution": c.attribution, "sha256": digest}
        path = out / row["segment"]
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, pcm16(piece), SAMPLE_RATE, subtype="PCM_16")
        rows.append(row)
    return rows, excluded


def build(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    eval_names, eval_hashes = eval_fingerprints(Path(args.eval_data))
    candidates: list[Candidate] = []
    for src in SOURCES:
        found = list_source(src)
        if not found:
            print(f"warning: {src.name} ({src.domain}): no files (package not installed?)", file=sys.stderr)
        candidates += found
    if args.berklee:
        candidates += berklee_source(Path(args.berklee))
    bad = sorted({c.licence for c in candidates} - set(ALLOWED_LICENCES))
    if bad:
        raise SystemExit(f"licences not on the allowed list: {bad}")

    rng = random.Random(args.seed)
    rows, excluded = [], []
    by_source: dict[tuple[str, str], list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_source[(c.source.name, c.source.domain)].append(c)
    done_dir = out / ".done"  # per-source results: an interrupted build resumes after the last finished source
    done_dir.mkdir(exist_ok=True)
    for (name, domain), cands in by_source.items():
        done = done_dir / f"{name}__{domain}.json"
        if done.exists():
            saved = json.loads(done.read_text())
            rows += saved["rows"]
            excluded += saved["excluded"]
            continue
        src_rows, src_excluded = build_source(cands, domain, out, eval_names, eval_hashes, args, rng)
        atomic_write_text(done, json.dumps({"rows": src_rows, "excluded": src_excluded}))
        rows += src_rows
        excluded += src_excluded

    fields = ["segment", "source", "package_version", "original_file", "start_s", "duration_s", "domain", "licence",
              "attribution", "sha256"]
    with atomic_writer(out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    with atomic_writer(out / "excluded.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["source", "original_file", "reason"])
        w.writeheader()
        w.writerows(excluded)
    write_mixes(out, rows, args.seed)
    summarize(rows, excluded)


def write_mixes(out: Path, rows: list[dict], seed: int) -> None:
    by_domain: dict[str, list[str]] = defaultdict(list)
    domain_of = {}
    for r in rows:
        path = str((out / r["segment"]).resolve())
        by_domain[r["domain"]].append(path)
        domain_of[path] = r["domain"]
    for mix, shares in MIXES.items():
        if not shares:
            chosen = sorted(p for paths in by_domain.values() for p in paths)
        else:
            total = min(len(by_domain[d]) / s for d, s in shares.items())  # the scarcest domain is used in full
            rng = random.Random(seed)
            chosen = sorted(p for d, s in shares.items() for p in rng.sample(by_domain[d], int(total * s)))
        atomic_write_text(out / f"train_{mix}.txt", "\n".join(chosen) + "\n")
        print(f"train_{mix}.txt: {len(chosen)} segments {dict(Counter(domain_of[p] for p in chosen))}")


def summarize(rows: list[dict], excluded: list[dict]) -> None:
    """Print the per-source and per-domain table of DATA_CARD.md."""
    per: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for r in rows:
        per[(r["domain"], r["source"], r["licence"])].append(float(r["duration_s"]))
    print("| domain | source | licence | files | segments | hours |\n|---|---|---|---|---|---|")
    for (domain, source, lic), durs in sorted(per.items()):
        files = len({r["original_file"] for r in rows
                     if (r["domain"], r["source"], r["licence"]) == (domain, source, lic)})
        print(f"| {domain} | {source} | {lic} | {files} | {len(durs)} | {sum(durs) / 3600:.2f} |")
    for domain in sorted({r["domain"] for r in rows}):
        durs = [float(r["duration_s"]) for r in rows if r["domain"] == domain]
        print(f"| {domain} | all | | {len({r['original_file'] for r in rows if r['domain'] == domain})} | "
              f"{len(durs)} | {sum(durs) / 3600:.2f} |")
    print(f"excluded (evaluation clips): {len(excluded)} {Counter(e['reason'] for e in excluded)}")


APT_PACKAGES = sorted({s.name for s in SOURCES})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="corpus folder (outside the repository)")
    p.add_argument("--eval_data", default="../shared/data", help="folder with fsdd/, spcv2_12/, esc50_f4/")
    p.add_argument("--berklee", default=None, help="berklee_unlabeled audio folder (CC BY 3.0)")
    p.add_argument("--segment_sec", type=float, default=10.0)
    p.add_argument("--min_sec", type=float, default=0.3, help="shorter trailing pieces are dropped")
    p.add_argument("--silence_rms", type=float, default=3e-4, help="quieter segments are dropped")
    p.add_argument("--max_segments_music", type=int, default=150, help="per music source, sampled at random")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apt", action="store_true", help="install the Debian packages (needs root), then exit")
    p.add_argument("--print-apt", action="store_true", help="print the apt-get line, then exit")
    args = p.parse_args()
    line = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    if args.print_apt:
        print(" ".join(line))
    elif args.apt:
        subprocess.run(line, check=True)
    elif not args.out:
        p.error("--out is required")
    else:
        build(args)


if __name__ == "__main__":
    main()
