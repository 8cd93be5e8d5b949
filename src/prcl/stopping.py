"""Stop signals: how a prcl process ends on SIGINT (Ctrl-C) or SIGTERM (``kill``, a scheduler's pre-emption).

Python runs signal handlers in the main thread only, so both ways below act there and do nothing elsewhere:

- :func:`stop_raises`: every stop signal raises :class:`Stopped` where the program is, so ``finally`` blocks
  run (loaders stop their worker processes, temporary files are removed) and the command ends with one line
  and exit status 128 + the signal number: 130 for SIGINT, 143 for SIGTERM. Every ``prcl`` command runs
  under it (``prcl.cli``).
- :func:`stop_after_step`: the first signal is only noted, with a line on stderr (the trainer finishes its
  step, saves it and stops); a second one raises :class:`Stopped` at once, wherever the program is.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A stop signal ended the work. A KeyboardInterrupt, so ``except Exception`` does not swallow it, and code
    that already cleans up after Ctrl-C does so after SIGTERM too. ``detail`` adds what was done or kept."""

    def __init__(self, signal_number: int, detail: str = "") -> None:
        super().__init__(signal_number, detail)
        self.signal_number = signal_number
        self.detail = detail

    @property
    def name(self) -> str:
        """The signal's name, e.g. "SIGTERM"."""
        return signal.Signals(self.signal_number).name

    @property
    def exit_code(self) -> int:
        """The exit status a process stopped by this signal reports: 128 + the signal number."""
        return 128 + self.signal_number

    def with_detail(self, detail: str) -> Stopped:
        """The same stop, saying ``detail`` (e.g. "3 of 10 images written") after the signal's name."""
        return Stopped(self.signal_number, detail)

    def __str__(self) -> str:
        return f"stopped by {self.name}" + (f"; {self.detail}" if self.detail else "")


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _handlers(handler) -> Iterator[None]:
    """``handler`` for SIGINT and SIGTERM inside the block (main thread only), the previous ones after it."""
    if not _in_main_thread():
        yield
        return
    previous = {number: signal.signal(number, handler) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, old in previous.items():
            signal.signal(number, old)


@contextmanager
def stop_raises() -> Iterator[list[int]]:
    """Inside the block a stop signal raises :class:`Stopped` (each time one arrives). The yielded list holds
    the signals received: cleanup that a Stopped interrupted can fail in its turn (torch.save, interrupted,
    raises a RuntimeError of its own) and replace it, and the list still says the work was stopped."""
    received: list[int] = []

    def stop(number: int, frame) -> None:
        received.append(number)
        raise Stopped(number)

    with _handlers(stop):
        yield received


def say(line: str) -> None:
    """One ``prcl:`` line on stderr, safe inside a signal handler: one unbuffered write, no Python stream (a
    handler that prints through ``sys.stderr`` while the program was writing to it fails as a reentrant call)."""
    try:
        os.write(2, f"prcl: {line}\n".encode(errors="replace"))
    except OSError:
        pass  # no stderr: nothing to say it on


@contextmanager
def stop_after_step(first: str | None) -> Iterator[list[int]]:
    """Inside the block the first stop signal is appended to the yielded list, for the caller to check when it
    can stop cleanly, and ``prcl: <SIGNAL>: <first>; send it again to stop at once`` is written on stderr
    (``first`` None: nothing is written, e.g. by all processes of a torchrun but the first); a second signal is
    appended too and raises :class:`Stopped` at once (more than one signal in the list: stopped at once, even
    when an error of the interrupted cleanup replaced the Stopped). Outside the main thread the list stays
    empty."""
    received: list[int] = []

    def note(number: int, frame) -> None:
        received.append(number)
        if len(received) > 1:
            raise Stopped(number)
        if first is not None:
            say(f"{signal.Signals(number).name}: {first}; send it again to stop at once")

    with _handlers(note):
        yield received
