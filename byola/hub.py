"""Models by name: the model shipped with byola and the official BYOL-A weights, downloaded once into a cache.

``resolve(ref)`` turns what a user gives (``None``, a model name, a file path) into a local file that
``byola.checkpoint.load_any`` reads. Official weights are fetched from their source (the nttcslab/byol-a
repository at a fixed commit), never re-hosted by byola, into ``$BYOLA_CACHE/models`` (default
``~/.cache/byola``): the download resumes from a partial ``.part`` file (HTTP Range), is checked against the
recorded checksum (sha256 where recorded, else the git blob id) and renamed into place only when it matches. The
files are licensed by NTT for evaluation only: the first download shows the licence and needs it accepted once
(``accept_license=True``, ``--accept_license`` or ``BYOLA_ACCEPT_LICENSE=1``); the acceptance is recorded in the
cache. Users may list their own models in ``$BYOLA_CACHE/models.json`` (a list of objects with the fields of
:class:`ModelInfo`; ``name``, ``url`` and ``sha256`` at least).

Downloads use urllib: one GET with a Range header needs nothing beyond the standard library.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import hashlib
import importlib.resources
import json
import os
import re
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError
from .files import atomic_write_text, commit

CACHE_ENV = "BYOLA_CACHE"
ACCEPT_ENV = "BYOLA_ACCEPT_LICENSE"
DEFAULT_MODEL = "byola-v1-d512-open"

OFFICIAL_REPOSITORY = "nttcslab/byol-a"
OFFICIAL_COMMIT = "3e65c9283498d06915e6dbcff3445307d8d3e930"
_OFFICIAL_RAW = f"https://raw.githubusercontent.com/{OFFICIAL_REPOSITORY}/{OFFICIAL_COMMIT}/"
_OFFICIAL_LICENCE = "NTT evaluation-only licence"
_OFFICIAL_LICENCE_URL = f"https://github.com/{OFFICIAL_REPOSITORY}/blob/{OFFICIAL_COMMIT}/LICENSE"
_OFFICIAL_TERMS = ("NTT licenses the BYOL-A weights for evaluation only: internal testing, analysing and evaluating "
                   "the methods of the BYOL-A paper; no redistribution, no copies beyond backups.")
_BLOCK = 1 << 20


class HubError(UsageError):
    """A model that cannot be found, downloaded or verified; the message says what to do."""


@dataclass(frozen=True)
class ModelInfo:
    """A model byola can load by name. ``url`` None: shipped in the package (``file`` in ``byola.pretrained``)."""

    name: str
    description: str
    architecture: str
    file: str
    licence: str
    licence_url: str | None = None
    url: str | None = None
    size: int | None = None            # bytes, when recorded
    approx_size: int | None = None     # bytes, estimated from the architecture when the size is not recorded
    sha256: str | None = None
    git_blob_sha1: str | None = None
    needs_acceptance: bool = False


def _official(version: str, d: int, path: str, blob: str, approx: int, size: int | None = None,
              sha256: str | None = None) -> ModelInfo:
    arch = ("AudioNTT2020" if version == "v1" else "AudioNTT2022") + f" d={d}"
    return ModelInfo(name=f"byol-a-{version}-d{d}", description=f"official BYOL-A {version} weights (NTT, AudioSet)",
                     architecture=arch, file=Path(path).name, licence=_OFFICIAL_LICENCE,
                     licence_url=_OFFICIAL_LICENCE_URL, url=_OFFICIAL_RAW + path, size=size, approx_size=approx,
                     sha256=sha256, git_blob_sha1=blob, needs_acceptance=True)


# Checksums and the d512 size: /work/shared/official_weights.json (the files at OFFICIAL_COMMIT). Sizes of the
# others: parameter count x 4 bytes (AudioNTT2020 d1024: 1.65 M, d2048: 5.32 M; AudioNTT2022 d2048: 4.24 M).
MODELS: dict[str, ModelInfo] = {m.name: m for m in (
    ModelInfo(name=DEFAULT_MODEL, description="shipped with byola: BYOL-A v1 recipe on openly licensed speech, "
              "sound and music (pretrained/MODEL_CARD.md)", architecture="AudioNTT2020 d=512",
              file="byola_v1_d512_open.safetensors", licence="MIT (byola); training data: see pretrained/corpus"),
    _official("v1", 512, "pretrained_weights/AudioNTT2020-BYOLA-64x96d512.pth",
              "314a35a543ddca60f175addfa6fbeecb56e1944a", 2_402_316, size=2410576,
              sha256="6cc64226318494f06ef41d7e5810be7d37abfd6490da45abdab48f188c5332e2"),
    _official("v1", 1024, "pretrained_weights/AudioNTT2020-BYOLA-64x96d1024.pth",
              "1c04492d54707e53f04fb664ec6bf3ec655d47f0", 6_600_716),
    _official("v1", 2048, "pretrained_weights/AudioNTT2020-BYOLA-64x96d2048.pth",
              "dd93cab283451ad67baff974933aa122d4a8fa24", 21_288_972),
    _official("v2", 2048, "v2/AudioNTT2022-BYOLA-64x96d2048.pth",
              "7e081bb05e8e1e620a13fa21f36a9fa4a973b1c3", 16_941_832),
)}
ALIASES = {"default": DEFAULT_MODEL}


def cache_dir() -> Path:
    """``$BYOLA_CACHE``, default ``~/.cache/byola``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "byola")


def shipped_checkpoint() -> Path:
    """The model shipped in the repository's ``pretrained/`` folder (installed as ``byola.pretrained``)."""
    path = Path(str(importlib.resources.files("byola.pretrained"))) / MODELS[DEFAULT_MODEL].file
    if not path.is_file():
        raise HubError(f"the shipped model {path} is missing", "reinstall byola, or pass a checkpoint file")
    return path


def known_models() -> dict[str, ModelInfo]:
    """The built-in models plus the entries of ``$BYOLA_CACHE/models.json``."""
    models = dict(MODELS)
    extra = cache_dir() / "models.json"
    if extra.is_file():
        fields = {f.name for f in dataclasses.fields(ModelInfo)}
        try:
            entries = json.loads(extra.read_text())
            for entry in entries:
                unknown = set(entry) - fields
                if unknown or not entry.get("url") or not (entry.get("sha256") or entry.get("git_blob_sha1")):
                    raise ValueError(f"entry {entry.get('name')!r}: needs name, url and sha256"
                                     + (f"; unknown fields {sorted(unknown)}" if unknown else ""))
                entry = {"description": "listed in models.json", "architecture": "?", "licence": "?",
                         "file": Path(entry["url"]).name, **entry}
                models[entry["name"]] = ModelInfo(**entry)
        except (ValueError, TypeError) as err:
            raise HubError(f"{extra}: {err}", "fix the file (a JSON list of {name, url, sha256, ...})") from None
    return models


def model_name(ref: str | os.PathLike | None) -> str:
    """A short label for what ``ref`` names: the model name, or the file's stem."""
    if ref is None:
        return DEFAULT_MODEL
    key = ALIASES.get(str(ref), str(ref))
    return key if not Path(ref).is_file() and key in known_models() else Path(ref).stem


def resolve(ref: str | os.PathLike | None, accept_license: bool = False, progress: bool = True) -> Path:
    """A local checkpoint file for ``ref``: None (the shipped model), a model name (downloaded once, verified) or
    an existing file path (a byola ``.safetensors`` or an official ``.pth``)."""
    if ref is None:
        return shipped_checkpoint()
    path = Path(ref)
    if path.is_file():
        return path
    key = ALIASES.get(str(ref), str(ref))
    models = known_models()
    if key in models:
        return fetch(models[key], accept_license=accept_license, progress=progress)
    if path.is_dir():
        raise HubError(f"{ref} is a folder", "give a checkpoint file (e.g. RUN/model.safetensors) or a model name")
    if "/" in str(ref) or os.sep in str(ref) or path.suffix in (".safetensors", ".pth", ".pt"):
        raise HubError(f"{ref}: no such checkpoint file", "check the path, or give a model name (`byola models`)")
    close = difflib.get_close_matches(key, list(models) + list(ALIASES), n=1)
    raise HubError(f"unknown model {str(ref)!r}" + (f" (did you mean {close[0]}?)" if close else ""),
                   f"known models: {', '.join(models)} (`byola models`); or give a checkpoint file")


def cached_path(info: ModelInfo) -> Path:
    """Where a downloaded model ``info`` lives in the cache: ``$BYOLA_CACHE/models/<file>`` (it may not exist yet)."""
    return cache_dir() / "models" / info.file


def fetch(info: ModelInfo, accept_license: bool = False, progress: bool = True) -> Path:
    """The verified local file of ``info``, downloading it (once, resumably) when it is not in the cache."""
    if info.url is None:
        return shipped_checkpoint()
    dest = cached_path(info)
    if dest.is_file():
        problem = verify(dest, info)
        if problem:
            raise HubError(f"{dest} does not match {info.name}'s recorded checksum ({problem})",
                           "delete it and rerun to download it again")
        return dest
    _require_licence(info, accept_license)
    download(info, dest, progress=progress)
    return dest


def _licence_record(info: ModelInfo) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", info.licence_url or info.licence).strip("-")[-80:]
    return cache_dir() / "licences" / f"{slug}.accepted"


def _require_licence(info: ModelInfo, accept_license: bool) -> None:
    """Show the licence of a model about to be downloaded; refuse until it has been accepted once."""
    if not info.needs_acceptance:
        return
    record = _licence_record(info)
    if record.is_file():
        return
    terms = _OFFICIAL_TERMS if info.licence_url == _OFFICIAL_LICENCE_URL else f"Licence: {info.licence}."
    print(f"{info.name}: {info.description}. {terms}\nLicence text: {info.licence_url}\n"
          f"byola downloads the file from its source ({info.url}) into {cache_dir()}; it never ships it.",
          file=sys.stderr)
    if not (accept_license or os.environ.get(ACCEPT_ENV, "") not in ("", "0")):
        raise HubError(f"{info.name} needs its licence accepted ({info.licence}, above)",
                       f"if you accept it, rerun with --accept_license (Python: accept_license=True) or set "
                       f"{ACCEPT_ENV}=1; asked once")
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, f"{info.licence_url}\naccepted {_dt.datetime.now(_dt.timezone.utc).isoformat()}\n")


def _digests(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file in one pass."""
    sha256, blob = hashlib.sha256(), hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            sha256.update(block)
            blob.update(block)
    return sha256.hexdigest(), blob.hexdigest()


def verify(path: Path, info: ModelInfo) -> str | None:
    """None when ``path`` matches the recorded size and checksums, else what differs."""
    size = path.stat().st_size
    if info.size is not None and size != info.size:
        return f"size {size} bytes, expected {info.size}"
    sha256, blob = _digests(path)
    if info.sha256 and sha256 != info.sha256:
        return f"sha256 {sha256}, expected {info.sha256}"
    if info.git_blob_sha1 and blob != info.git_blob_sha1:
        return f"git blob sha1 {blob}, expected {info.git_blob_sha1}"
    return None


def download(info: ModelInfo, dest: Path, progress: bool = True, timeout: float = 30.0) -> None:
    """Download ``info.url`` to ``dest`` through ``dest.part`` (resumed with an HTTP Range request when a partial
    file is there), verify it, then commit it into place (:func:`byola.files.commit`: fsync, rename). A mismatching
    download is deleted."""
    from tqdm.auto import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    if part.is_symlink():  # byola never makes one: someone placed it; resume into byola's own file only
        part.unlink()
    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "byola"} | ({"Range": f"bytes={have}-"} if have else {})
    by_hand = f"download {info.url} yourself and place it at {dest}"
    try:
        response = urllib.request.urlopen(urllib.request.Request(info.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code != 416 or not have:  # 416: the partial file is already complete
            raise HubError(f"cannot download {info.name} from {info.url}: HTTP {err.code} {err.reason}",
                           by_hand) from None
        response = None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise HubError(f"cannot download {info.name} from {info.url} ({reason})",
                       f"check the network; without one, {by_hand}") from None
    if response is not None:
        with response:
            resumed = response.status == 206 and response.headers.get("Content-Range", "").startswith(
                f"bytes {have}-")
            start = have if resumed else 0
            length = response.headers.get("Content-Length")
            total = start + int(length) if length is not None else None
            flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if resumed else os.O_TRUNC)
            with os.fdopen(os.open(part, flags, 0o666), "ab" if resumed else "wb") as f, \
                    tqdm(total=total, initial=start, unit="B", unit_scale=True, desc=f"download {info.name}",
                         disable=not progress, file=sys.stderr) as bar:
                try:
                    for block in iter(lambda: response.read(_BLOCK), b""):
                        f.write(block)
                        bar.update(len(block))
                except OSError:  # connection reset or timed out: keep what arrived
                    pass
                got = f.tell()
            if total is not None and got < total:
                raise HubError(f"download of {info.name} interrupted at {got} of {total} bytes (kept in {part})",
                               "rerun the command to resume it")
    problem = verify(part, info)
    if problem:
        part.unlink()
        raise HubError(f"the download of {info.name} from {info.url} does not match its recorded checksum "
                       f"({problem}); deleted it", "rerun to retry; if it fails again, the source has changed")
    commit(part, dest)


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def models_table() -> str:
    """The text `byola models` prints: per model, name, architecture, size, licence, source, checksum, cache."""
    lines = []
    for info in known_models().values():
        default = " (default)" if info.name == DEFAULT_MODEL else ""
        if info.url is None:
            path = shipped_checkpoint()
            size, source, state = _size(path.stat().st_size), f"in the package: {path}", "shipped"
            checksum = f"sha256 {_digests(path)[0]}"
        else:
            size = _size(info.size) if info.size else f"~{_size(info.approx_size)}" if info.approx_size else "?"
            source, state = info.url, ("downloaded" if cached_path(info).is_file() else "not downloaded")
            checksum = f"sha256 {info.sha256}" if info.sha256 else f"git blob sha1 {info.git_blob_sha1}"
        licence = info.licence + (f" ({info.licence_url})" if info.licence_url else "")
        lines += [f"{info.name}{default}  [{state}]", f"    {info.architecture}, {size}: {info.description}",
                  f"    licence  {licence}", f"    source   {source}", f"    {checksum}", ""]
    lines.append(f"cache: {cache_dir()} (${CACHE_ENV}); official weights need --accept_license once "
                 f"(or {ACCEPT_ENV}=1)")
    return "\n".join(lines)
