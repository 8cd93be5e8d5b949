"""`prcl convert-reference`: the authors' release checkpoint written as a prcl checkpoint."""

from __future__ import annotations

import argparse

from prcl.commands import require


def cmd_convert_reference(args: argparse.Namespace) -> int:
    from prcl.models.reference_checkpoint import convert_reference_checkpoint

    require(args, "convert-reference", {"release": "the release .pth file", "out": "--out FILE"})
    convert_reference_checkpoint(args.release, args.out, args.overrides)
    print(f"wrote {args.out} (converted from {args.release}; for prcl eval, predict and export, not --resume)")
    return 0
