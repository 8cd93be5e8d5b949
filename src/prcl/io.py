"""Files: atomic writes (a temporary file beside the target, flushed to disk, then renamed onto it),
JSON written that way, and ``metrics.jsonl``, the one-JSON-object-per-line log a run appends to.

An interrupted write (a crash, a full disk, an exception in the body) never leaves a half-written
file in place of a good one. A write that fails (a full disk, a read-only folder) removes its
temporary file and raises :class:`WriteError`, one line naming the file and the reason. A process
killed while writing leaves its temporary file, ``.<name>.<pid>-<random>.tmp``: the pid in the name
lets the next start remove it once that process is gone (:func:`remove_leftovers`), never a file
another running process is still writing.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from prcl.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)
_IMPORTED = time.time()  # about when this process started: a temporary file older than this is not its own
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]+\.tmp$")
_OLD_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # earlier versions' names, without a pid
_NO_SPACE = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}  # EFBIG: a file size limit
_NOT_ALLOWED = {errno.EROFS, errno.EACCES, errno.EPERM}


class WriteError(UserError):
    """A file that could not be written (a full disk, a read-only folder, no permission): one line naming
    it. ``path`` and ``reason`` (e.g. "no space left on device") are kept for callers that add advice."""

    path: Path | None = None
    reason: str = ""


def reason_of(error: OSError) -> str:
    """What went wrong, for a sentence: "no space left on device" for OSError(ENOSPC, ...); an error without
    a number (numpy's short write) as "the write failed (10000 requested and 109 written)"."""
    if error.strerror:
        return error.strerror[:1].lower() + error.strerror[1:]
    return f"the write failed ({error})" if str(error) else "the write failed"


def write_error(path: str | os.PathLike, error: OSError) -> WriteError:
    """The one-line :class:`WriteError` for an OSError met while writing ``path``."""
    reason = reason_of(error)
    if error.errno in _NO_SPACE:
        advice = "free space there or write elsewhere, then run the command again"
    elif error.errno in _NOT_ALLOWED:
        advice = "make the folder writable or write elsewhere"
    else:
        advice = "check the folder and its free space, then run the command again"
    failure = WriteError(f"cannot write {path}: {reason}; {advice}")
    failure.path, failure.reason = Path(path), reason
    return failure


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX); silently skipped where folders cannot be opened."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str) -> Iterator[IO[Any]]:
    """Open ``.<name>.<pid>-<random>.tmp`` next to ``path``; on success fsync it and rename it onto ``path``.

    ``mode`` is given at every call: "w" (text, written as UTF-8) or "wb" (binary: checkpoints, images,
    arrays). On any exception the temporary file is removed and ``path`` is left as it was; an OSError
    (from the body's writes, the flush, the rename, or creating the folder) becomes a :class:`WriteError`
    naming ``path``. Creates the folder. The file gets the usual permissions (0666 minus the umask).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp")
    except OSError as error:
        raise write_error(path, error) from None
    try:
        with os.fdopen(handle, mode, encoding=None if "b" in mode else "utf-8") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        if isinstance(error, OSError):
            raise write_error(path, error) from None
        raise
    _fsync_folder(path.parent)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when that cannot be told: keep its files)."""
    if pid <= 0:
        return False
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would end the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process
        return True
    return True


def remove_leftovers(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove the temporary files that :func:`atomic_write` left in ``folder`` (only those of the file
    ``name`` when given) in processes that were killed while writing; returns them.

    A file whose pid (in its name) is a running process is kept: two commands may write into one folder
    at once. A name without a pid (written by an earlier prcl) is removed when it is older than this
    process. Nothing is raised: a folder that is missing or cannot be changed is left as it is.
    """
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name) or _OLD_TEMPORARY.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if "pid" in match.groupdict():
                if process_alive(int(match["pid"])):
                    continue
            elif entry.stat(follow_symlinks=False).st_mtime >= _IMPORTED:
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


def write_json(path: str | os.PathLike, payload: Any) -> None:
    """Write ``payload`` as indented JSON to ``path`` atomically."""
    with atomic_write(path, "w") as stream:
        json.dump(payload, stream, indent=2)


def read_records(path: Path, then: str = "") -> tuple[list[dict], bool]:
    """The JSON objects of ``metrics.jsonl`` at ``path``, in order, and whether a torn last line was left out.

    A crash or a full disk during an append leaves at most a torn last line, which is skipped; any
    other line that is not JSON is a UserError naming it (``then`` is added to the advice, e.g.
    ", then resume"). Blank lines and lines holding no object are skipped.
    """
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return records, True
            raise UserError(f"{path} line {number} is not JSON; fix or remove that line{then}") from None
        if isinstance(record, dict):
            records.append(record)
    return records, False


def folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be written or created (e.g. "is under x, which is a file"), else None. Writes and
    removes a probe file in the nearest existing folder (``os.access`` misses read-only mounts)."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        if existing == folder:
            return "is a file, not a folder" if existing.exists() else "cannot be created"
        return f"cannot be created: {existing} is a file, not a folder"
    try:
        handle, probe = tempfile.mkstemp(dir=existing, prefix=f".prcl-write-check.{os.getpid()}-", suffix=".tmp")
    except OSError as error:
        reason = error.strerror or type(error).__name__
        return f"is not writable ({reason})" if existing == folder else f"cannot be created in {existing} ({reason})"
    os.close(handle)
    os.unlink(probe)
    return None
