"""`prcl demo`: supervised, mean teacher and PRCL trained on the embedded demo data and compared."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from prcl.stopping import Stopped


def demo_command(args: argparse.Namespace) -> str:
    """The command that continues this demo: the same one (finished runs are reused, a stopped one resumed)."""
    words = ["prcl", "demo", "--out", args.out, *(["--seed", str(args.seed)] if args.seed else []), *args.overrides]
    return shlex.join(words)


def cmd_demo(args: argparse.Namespace) -> int:
    from prcl.demo import run_demo
    from prcl.engine.trainer import TrainingInterrupted

    try:
        run_demo(out_dir=Path(args.out), overrides=args.overrides, seed=args.seed)
    except TrainingInterrupted as stopped:  # one line and 130 / 143, as `prcl train` says it
        print(f"prcl: {stopped.what}; continue with: {demo_command(args)}", file=sys.stderr)
        return stopped.exit_code
    except Stopped as stop:  # between the runs' steps: making the data, the report
        raise stop.with_detail(f"continue with: {demo_command(args)}") from None
    return 0
