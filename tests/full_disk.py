"""A full disk for tests, without one: prcl's atomic writes of chosen files fail as they would on a full tmpfs.

``fill_disk(monkeypatch, "last.pt", room=1000)`` makes every later ``prcl.io.atomic_write`` of a file named
``last.pt`` raise ``OSError(ENOSPC)`` from the write that passes ``room`` bytes, as the kernel does when the
disk fills up during the write. Other files are written as usual.
"""

from __future__ import annotations

import errno
import os
import tempfile

import prcl.io


class _FullStream:
    """A file whose writes fail with ENOSPC once ``room`` bytes (or characters) were written."""

    def __init__(self, stream, room: int) -> None:
        self._stream, self._room = stream, room

    def write(self, data):
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._stream.write(data)

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._stream.close()


def fill_disk(monkeypatch, name: str, room: int = 0) -> None:
    """Atomic writes of files called ``name`` fail with ENOSPC after ``room`` bytes (see the module)."""
    temporaries: dict[int, str] = {}
    real_mkstemp, real_fdopen = tempfile.mkstemp, os.fdopen

    def mkstemp(*args, **kwargs):
        handle, path = real_mkstemp(*args, **kwargs)
        temporaries[handle] = os.path.basename(path)
        return handle, path

    def fdopen(handle, *args, **kwargs):
        stream = real_fdopen(handle, *args, **kwargs)
        if temporaries.pop(handle, "").startswith(f".{name}."):  # atomic_write's ".<name>.<pid>-<random>.tmp"
            return _FullStream(stream, room)
        return stream

    monkeypatch.setattr(prcl.io.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(prcl.io.os, "fdopen", fdopen)
