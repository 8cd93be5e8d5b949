"""What each `prcl` command does, one module per command, callable from Python too.

``prcl.cli`` parses the arguments, then imports the command's module here and calls its ``cmd_<name>(args)``,
which returns the exit status. Only the command that runs is imported, and the heavy parts (torch, the
networks) inside its functions, so that parsing (``prcl --help``, a usage mistake) and reading a config
import no torch.
"""

from __future__ import annotations

import argparse

from prcl.errors import UserError


def require(args: argparse.Namespace, command: str, needed: dict[str, str]) -> None:
    """UserError naming every missing argument of ``prcl <command>`` (argparse would print usage too)."""
    missing = [flag for dest, flag in needed.items() if not getattr(args, dest)]
    if missing:
        raise UserError(f"`prcl {command}` needs {' and '.join(missing)} (see prcl {command} --help)")
