"""`prcl convert-release`: the authors' release checkpoint written as a prcl checkpoint."""

from __future__ import annotations

import argparse

from prcl.commands import require


def cmd_convert_release(args: argparse.Namespace) -> int:
    from prcl.models.release_checkpoint import convert_release_checkpoint

    require(args, "convert-release", {"release": "the release .pth file", "out": "--out FILE"})
    convert_release_checkpoint(args.release, args.out, args.overrides)
    print(f"wrote {args.out} (converted from {args.release}; for prcl eval, predict and export, not --resume)")
    return 0
