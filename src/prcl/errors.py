"""Errors a user can cause and fix: the command line prints their message on one line, exit 2."""

from __future__ import annotations

import math
import reprlib
from typing import Any

SHOWN_LIMIT = 80
"""At most this many characters of a value quoted in an error message (:func:`shown`)."""


class UserError(Exception):
    """A mistake in the user's input (path, config key, value, data file) with a fix in the message.

    Raised inside a DataLoader worker, it reaches the main process as ``type(error)(text)`` where
    torch's ``text`` is "Caught ... in DataLoader worker process N.\nOriginal Traceback ...": the
    constructor recognises that text and keeps the original one-line message, so the error prints
    as one line there too. The worker's traceback stays in ``worker_traceback`` ("" otherwise).
    """

    def __init__(self, message: Any = "", *args: Any) -> None:
        text, self.worker_traceback = str(message), ""
        if text.startswith("Caught ") and "Original Traceback" in text:
            self.worker_traceback, text = text, _last_error_line(text, type(self).__name__)
        super().__init__(text, *args)


def _last_error_line(text: str, class_name: str) -> str:
    """The message of the ``<module>.<class_name>: message`` line at the end of a formatted traceback."""
    marker = f"{class_name}: "
    for line in reversed(text.rstrip().splitlines()):
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return text.rstrip().splitlines()[-1].strip()


class _ShortRepr(reprlib.Repr):
    """reprlib's bounded repr (a few items per list or dict level, a few levels): its cost does not grow
    with the value, so a value built from nested YAML aliases costs no more to show than a small one."""

    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() > 128:  # repr() of an int over 4300 digits raises; nobody reads 40 digits anyway
            return f"<an integer of about {round(value.bit_length() * math.log10(2))} digits>"
        return super().repr_int(value, level)


_SHORT = _ShortRepr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 3, SHOWN_LIMIT, SHOWN_LIMIT, SHOWN_LIMIT


def shown(value: Any, limit: int = SHOWN_LIMIT) -> str:
    """``repr(value)`` for an error message, cut to ``limit`` characters ("..." marks the cut) and to one line.

    Every message that quotes a value the user gave (a config value, an override, a file name) goes through
    this, so that one huge value (a long string, a YAML document whose aliases nest lists in lists) gives a
    short line, computed in time that does not depend on the value's size.
    """
    return cut(_SHORT.repr(value), limit)


def cut(text: str, limit: int = SHOWN_LIMIT) -> str:
    """``text`` on one line (whitespace runs become one space), cut to ``limit`` characters with "..."."""
    text = " ".join(text[:4 * limit].split())
    return text if len(text) <= limit else text[:limit - 3] + "..."
