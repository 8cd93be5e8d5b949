"""Errors a user can cause and fix: the command line prints their message on one line, exit 2."""

from __future__ import annotations

from typing import Any


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
