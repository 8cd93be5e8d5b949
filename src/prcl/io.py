"""Files: atomic writes (a temporary file beside the target, flushed to disk, then renamed onto it),
JSON written that way, and ``metrics.jsonl``, the one-JSON-object-per-line log a run appends to.

An interrupted write (a crash, a full disk, an exception in the body) never leaves a half-written
file in place of a good one, nor a temporary file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from prcl.errors import UserError

_UMASK = os.umask(0)
os.umask(_UMASK)


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
    """Open ``.<name>.<random>.tmp`` next to ``path``; on success fsync it and rename it onto ``path``.

    ``mode`` is given at every call: "w" (text, written as UTF-8) or "wb" (binary: checkpoints, images,
    arrays). On any exception the temporary file is removed and ``path`` is left as it was. Creates the
    folder. The file gets the usual permissions (0666 minus the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, mode, encoding=None if "b" in mode else "utf-8") as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, 0o666 & ~_UMASK)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


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
