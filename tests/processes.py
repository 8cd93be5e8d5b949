"""Commands run as real processes in tests, and every process they start found again afterwards.

Each command runs in a session of its own with a marked environment (``PRCL_TEST_PROCESS=<random>``), which
every process it starts inherits (DataLoader workers included, whatever their session), so the test finds
them all in /proc, asserts none is left, and kills any that is.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

MARK = "PRCL_TEST_PROCESS"
HAS_PROC = Path("/proc/self/environ").is_file()


def marked_processes(mark: str) -> list[tuple[int, str]]:
    """(pid, name) of the live processes (zombies left out) whose environment holds ``PRCL_TEST_PROCESS=mark``."""
    needle = f"{MARK}={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
        except OSError:  # ended meanwhile, or not ours
            continue
        name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
        if state != "Z":
            found.append((int(entry.name), name))
    return found


class Run:
    """``args`` started in its own session, stdout and stderr in files under ``folder``."""

    def __init__(self, args: list[str], folder: Path, cwd: Path | None = None) -> None:
        self.mark = uuid.uuid4().hex
        self.stdout, self.stderr = folder / f"{self.mark}.out", folder / f"{self.mark}.err"
        env = {**os.environ, "OMP_NUM_THREADS": "1", MARK: self.mark}
        with open(self.stdout, "w") as out, open(self.stderr, "w") as err:
            self.process = subprocess.Popen(args, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True)

    @classmethod
    def prcl(cls, args: list[str], folder: Path) -> Run:
        return cls([sys.executable, "-m", "prcl", *args], folder)

    def err(self) -> str:
        return self.stderr.read_text()

    def wait_for(self, condition, timeout: float = 180.0) -> None:
        """Poll ``condition`` until true; fails when the process ended first or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if self.process.poll() is not None:
                raise AssertionError(f"ended early ({self.process.returncode}): {self.err()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting: {self.err()[-2000:]}")
            time.sleep(0.02)

    def stop(self, sig: int, limit: float = 60.0) -> int:
        """Send ``sig`` to the process itself and wait for it (at most ``limit`` seconds); its exit status."""
        self.process.send_signal(sig)
        try:
            return self.process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {limit:.0f} s after {signal.Signals(sig).name}: "
                                 f"{self.err()[-2000:]}") from None

    def leftovers(self) -> list[tuple[int, str]]:
        """The processes it started that are still alive (the process itself once it has ended)."""
        return marked_processes(self.mark)

    def children(self) -> list[tuple[int, str]]:
        return [(pid, name) for pid, name in self.leftovers() if pid != self.process.pid]

    def kill(self) -> None:
        """SIGKILL to whatever of it is left (the test's cleanup)."""
        for pid, _ in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout=60)
