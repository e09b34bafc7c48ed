"""Shared file mechanics: atomic writes, the advisory lock of an output folder, digests, and input listing.

Atomic write: the content goes to a temporary file created exclusively (``O_EXCL``, unique name) in the target's
folder, is flushed to disk (fsync), gets the permissions the user's umask gives new files, and is renamed over the
target. A reader sees the old file or the new one, never a partial one, and nothing is ever written through a path
that someone else placed (a link or a file of the target's name is replaced, not followed).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator

PathLike = str | os.PathLike


def _umask() -> int:
    """The process umask (read by setting and restoring it; /proc is not always there)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """Permissions a file created with ``open()`` gets here: 0o666 minus the umask."""
    return 0o666 & ~_umask()


def new_temp(path: PathLike) -> str:
    """A new empty file beside ``path``, created exclusively under a unique name (``O_EXCL``) with the permissions
    the user's umask gives new files; `commit` renames it to ``path``."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise _about(path, err) from None
    try:
        os.fchmod(fd, new_file_mode())
    finally:
        os.close(fd)
    return tmp


def commit(tmp: PathLike, path: PathLike) -> None:
    """Flush ``tmp`` to disk and rename it over ``path`` (a link of that name is replaced, not followed), with the
    permissions the user's umask gives new files (whatever the writer that filled ``tmp`` set)."""
    fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, new_file_mode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except OSError as err:
        raise _about(path, err) from None


def _about(path: PathLike, err: OSError) -> OSError:
    """``err``, raised on the temporary file beside ``path``, restated about ``path`` (the name the user gave); one
    without an errno (not the system's) is kept as it is, so its message is not lost."""
    if err.errno is None:
        return err
    reason = {errno.ENOENT: f"folder {Path(path).parent} does not exist", errno.EISDIR: "a folder, not a file",
              errno.ENOTDIR: f"{Path(path).parent} is not a folder"}.get(err.errno, err.strerror)
    return OSError(err.errno, reason, os.fspath(path))


@contextmanager
def atomic_writer(path: PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """A file object on a fresh temporary file beside ``path``; on success it is renamed to ``path``, on any
    exception removed (``path`` is left as it was)."""
    tmp = new_temp(path)
    try:
        with os.fdopen(os.open(tmp, os.O_WRONLY | os.O_NOFOLLOW), mode, **open_kwargs) as f:
            yield f
        commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (`atomic_writer`): readers see the old file or all of ``data``."""
    with atomic_writer(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (`atomic_writer`): readers see the old file or all of ``text``."""
    with atomic_writer(path, "w", encoding="utf-8") as f:
        f.write(text)


def atomic_write_with(path: PathLike, write: Callable[[str], None]) -> None:
    """Atomic write for a writer that takes a file name (safetensors' ``save_file``, ``np.lib.format.open_memmap``):
    ``write(tmp)`` fills the temporary file, which is then renamed to ``path``."""
    tmp = new_temp(path)
    try:
        write(tmp)
        commit(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_link(src: PathLike, path: PathLike) -> None:
    """Make ``path`` a hard link to ``src`` (a copy where the file system has no hard links or ``src`` is on
    another one), atomically: the link is made under a fresh name beside ``path`` (``os.link`` never follows or
    replaces a placed file), then committed like any atomic write. For immutable outputs only: both names share
    one file."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"
    try:
        os.link(src, tmp)
    except OSError as err:
        if err.errno not in (errno.EXDEV, errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        atomic_write_with(path, lambda t: shutil.copyfile(src, t))
        return
    try:
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def fsync_dir(folder: PathLike) -> None:
    """Make renames in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def json_digest(obj: Any) -> str:
    """Hex SHA-256 of ``obj``'s canonical JSON (sorted keys): a fingerprint of settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class FolderBusy(RuntimeError):
    """Another process holds the folder's lock."""


class FolderLock:
    """Exclusive advisory lock (``fcntl.flock``) on ``folder/name``, taken without waiting.

    The kernel releases it when the holder exits or is killed, so a dead run never blocks the next one. The lock
    file is opened without following links and never written.
    """

    def __init__(self, folder: PathLike, name: str = ".lock") -> None:
        self.path = Path(folder) / name
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock now (creating the lock file if needed); raises `FolderBusy` when another process holds it."""
        fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise FolderBusy(f"{self.path.parent} is being written by another process (lock {self.path}); "
                                 "wait for it to finish or choose another output folder") from None
            raise
        self._fd = fd

    def release(self) -> None:
        """Release the lock (nothing happens when it is not held)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


# -- input listing -----------------------------------------------------------------------------------------------
LIST_EXTENSIONS = (".txt", ".lst")


@dataclass
class Inputs:
    """What a set of input paths expands to: ``files`` (absolute paths as given or found, links not resolved,
    sorted, one per real file) and ``problems`` (path → reason) for entries that cannot be read as files: broken
    links, non-regular files, unreadable folders. ``missing`` lists inputs given explicitly that do not exist;
    ``aliases`` maps each further name of a file in ``files`` (a link to it, another hard path) to the name kept."""

    files: list[str] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    aliases: dict[str, str] = field(default_factory=dict)

    def all(self) -> list[str]:
        """Every path to account for (files and problems), sorted."""
        return sorted(set(self.files) | set(self.problems))


def list_inputs(sources: Iterable[PathLike], extensions: Sequence[str]) -> Inputs:
    """Expand input paths: folders (recursive, following links, files with ``extensions``, case-insensitive),
    text lists (one path per line: files or folders; relative to the list's folder; blank lines and ``#`` comments
    skipped) and files.

    A file ending in ``.txt`` or ``.lst`` is a list. Files named in a list or given directly are kept whatever
    their extension (an unreadable one is reported by whoever reads it). Two names of the same real file count
    once: the first in sorted order is kept, the others are in ``aliases`` and named in one warning.
    """
    extensions = tuple(e.lower() for e in extensions)
    result = Inputs()
    names: dict[str, set[str]] = {}  # real file -> the names it was given or found under

    def add(path: str) -> None:
        path = os.path.abspath(path)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            if os.path.islink(path):
                result.problems[path] = "broken link: " + os.readlink(path)
            else:
                result.problems[path] = "no such file"
            return
        except OSError as err:
            result.problems[path] = f"cannot read: {err.strerror}"
            return
        if not stat.S_ISREG(mode):
            result.problems[path] = "not a regular file"
            return
        names.setdefault(os.path.realpath(path), set()).add(path)

    def walk(folder: str) -> None:
        def unreadable(err: OSError) -> None:
            result.problems[os.path.abspath(err.filename or folder)] = f"cannot read folder: {err.strerror}"

        for root, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
            dirs.sort()
            for name in names:
                if os.path.splitext(name)[1].lower() in extensions:
                    add(os.path.join(root, name))
            for name in dirs:  # a folder named like an audio file is reported, not silently skipped
                if os.path.splitext(name)[1].lower() in extensions:
                    result.problems[os.path.abspath(os.path.join(root, name))] = "a folder, not an audio file"

    def is_list(path: str) -> bool:
        return os.path.splitext(path)[1].lower() in LIST_EXTENSIONS

    def read_list(path: str) -> list[str]:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a UTF-8 text list of audio paths") from None
        base = os.path.dirname(os.path.abspath(path))
        entries = (line.strip() for line in text.splitlines())
        return [e if os.path.isabs(e) else os.path.join(base, e) for e in entries if e and not e.startswith("#")]

    for source in sources:
        source = os.fspath(source)
        if os.path.isdir(source):
            walk(source)
        elif os.path.isfile(source) and is_list(source):
            for entry in read_list(source):
                walk(entry) if os.path.isdir(entry) else add(entry)
        elif os.path.lexists(source):
            add(source)
        else:
            result.missing.append(source)
    kept = {real: min(given) for real, given in names.items()}
    result.files = sorted(kept.values())
    result.aliases = {name: kept[real] for real, given in names.items() for name in sorted(given) if name != kept[real]}
    if result.aliases:
        shown = "; ".join(f"{a} is {k}" for a, k in list(result.aliases.items())[:3])
        more = f" (and {len(result.aliases) - 3} more)" if len(result.aliases) > 3 else ""
        warnings.warn(f"{len(result.aliases)} input(s) name a file already listed, used once under its first name: "
                      f"{shown}{more}", stacklevel=2)
    return result
