"""`prcl export`: a checkpoint's model as an ONNX file, checked against PyTorch."""

from __future__ import annotations

import argparse
import sys

from prcl.commands import require
from prcl.errors import UserError


def cmd_export(args: argparse.Namespace) -> int:
    from prcl.data.validate import check_output_file
    from prcl.infer import export
    from prcl.io import remove_leftovers

    require(args, "export", {"checkpoint": "--checkpoint FILE", "out": "--out FILE"})
    if args.format not in export.FORMATS:
        raise UserError(f"--format {args.format} is not supported; use --format onnx")
    if not export.onnx_available():
        print(export.MISSING_PACKAGES, file=sys.stderr)
        return 2
    out = check_output_file(args.out, "--out")
    remove_leftovers(out.parent, out.name)  # what an export killed while writing left there
    result = export.export_onnx(args.checkpoint, args.out, opset=args.opset, use=args.use, device=args.device,
                                check=not args.no_check)
    print(f"wrote {args.out} ({args.format}, opset {args.opset}, {args.use} weights)")
    if result is None:
        return 0
    print(export.check_line(result))
    return 0 if result["ok"] else 1
