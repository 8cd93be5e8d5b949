"""`prcl train`: one run from a config (and its overrides), resumable; a JSON summary line on stdout."""

from __future__ import annotations

import argparse
import json
import sys

from prcl.config import load_config
from prcl.stopping import Stopped


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # read and checked before torch is imported

    from prcl import distributed
    from prcl.engine.trainer import Trainer, TrainingInterrupted

    try:
        try:
            trainer = Trainer(cfg, resume=args.resume, resume_force=args.resume_force)
        except Stopped as stop:  # the trainer takes stop signals over once it trains
            raise stop.with_detail("before the first step (nothing was trained); run the same command again") \
                from None
        summary = trainer.fit()
    except TrainingInterrupted as stopped:
        print(f"prcl: {stopped}", file=sys.stderr)
        return stopped.exit_code
    finally:
        distributed.cleanup()  # leave the process group (under torchrun), after an error too
    print(json.dumps({k: summary[k] for k in ("method", "miou", "iterations", "images_per_second")}))
    return 0
