"""`prcl plot`: a run's curves (losses, lr, mIoU, images/s) drawn into a PNG."""

from __future__ import annotations

import argparse

from prcl.errors import UserError


def cmd_plot(args: argparse.Namespace) -> int:
    from prcl.infer.plots import plot_runs

    try:
        out = plot_runs(args.runs, args.out)
    except ImportError as error:
        raise UserError(str(error)) from None
    print(f"wrote {out}")
    return 0
