"""Shared fixtures."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """A folder for the tiny runs' demo data, generated on first use and shared by every test module."""
    return tmp_path_factory.mktemp("demo-data")


@pytest.fixture
def start_process(tmp_path):
    """Start a command as a marked process (tests/processes.py); whatever of it is left is killed afterwards."""
    from processes import Run

    started = []

    def start(args, cwd=None, prcl=True):
        run = Run.prcl(args, tmp_path) if prcl else Run(args, tmp_path, cwd=cwd)
        started.append(run)
        return run

    yield start
    for run in started:
        run.kill()


@pytest.fixture
def error_line(capsys):
    """``error_line(prefix="prcl")``: the one line a failed command wrote on stderr (asserted: one line, no
    traceback, starting with ``prefix``)."""

    def read(prefix: str = "prcl") -> str:
        err = capsys.readouterr().err
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
        return lines[0]

    return read
