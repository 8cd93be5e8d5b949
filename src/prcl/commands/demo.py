"""`prcl demo`: supervised, mean teacher and PRCL trained on the embedded demo data and compared."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_demo(args: argparse.Namespace) -> int:
    from prcl.demo import run_demo

    run_demo(out_dir=Path(args.out), overrides=args.overrides, seed=args.seed)
    return 0
