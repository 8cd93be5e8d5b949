"""The GPU figures of a full PRCL training step: one script, run on one GPU.

For ResNet-101 at 321 with 8 + 8 images per GPU (``--batch``), in float32 and in mixed precision
(bf16 where the card has it), without and with ``train.compile``: images per second, peak GPU memory,
the share of the PRCL contrast in the step (1 - t(mean_teacher) / t(prcl), same switches), and the
largest batch per GPU that fits (labeled = unlabeled, doubling then bisecting, two steps each).

    python benchmarks/bench_gpu.py --part eager --json gpu.jsonl      # about 3 minutes on an H100
    python benchmarks/bench_gpu.py --part compile --json gpu.jsonl    # compiles: several minutes each
    python benchmarks/bench_gpu.py --part compile --settings prcl:separate:compile   # one per call
    python benchmarks/bench_gpu.py --part max-batch --json gpu.jsonl

Each result is printed as one JSON line as soon as it is measured (and appended to ``--json``), so
a run cut short keeps what it measured. Results are recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import autocast_name, device_name, emit, run_setting  # noqa: E402

PARTS = {
    "eager": ["mean_teacher:separate", "prcl:separate", "mean_teacher:separate:amp", "prcl:separate:amp"],
    "compile": ["prcl:separate:amp:compile", "mean_teacher:separate:amp:compile",
                "prcl:separate:compile", "mean_teacher:separate:compile"],
}


def step_args(args: argparse.Namespace, batch: int, steps: int, warmup: int) -> argparse.Namespace:
    return argparse.Namespace(device=args.device, batch=batch, crop=args.crop, encoder=args.encoder, steps=steps,
                              warmup=warmup, kernel="auto", set=args.set)


def fits(setting: str, batch: int, args: argparse.Namespace, root: Path) -> bool:
    """Whether two training steps of ``setting`` at ``batch`` + ``batch`` images run without running out of memory."""
    try:
        run_setting(setting, step_args(args, batch, steps=1, warmup=1), root)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def largest_batch(setting: str, args: argparse.Namespace, root: Path) -> dict:
    started = time.perf_counter()
    low, high = 0, args.batch
    while high <= args.max_batch and fits(setting, high, args, root):
        low, high = high, high * 2
    if high > args.max_batch:
        return {"setting": setting, "largest_batch": f">={low}", "search_s": round(time.perf_counter() - started, 1)}
    while high - low > max(1, low // 8):  # within 1/8 of the answer
        middle = (low + high) // 2
        low, high = (middle, high) if fits(setting, middle, args, root) else (low, middle)
    return {"setting": setting, "largest_batch": f"{low}+{low}", "search_s": round(time.perf_counter() - started, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["eager", "compile", "max-batch"], required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch", type=int, default=8, help="labeled (and unlabeled) images per GPU")
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--max-batch", type=int, default=128, help="stop the largest-batch search here")
    parser.add_argument("--settings", nargs="+", metavar="SETTING",
                        help="only these settings of the part (compiling ResNet-101 takes minutes per setting: "
                             "split the compile part over calls that each fit a time limit)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides for every run")
    parser.add_argument("--json", help="append one JSON line per result to this file")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        device = torch.device(args.device)
        print(f"# {device_name(device)} | torch {torch.__version__} | amp {autocast_name(device)}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        if args.part == "max-batch":
            for setting in ("prcl:separate", "prcl:separate:amp"):
                emit(largest_batch(setting, args, root), args.json)
            return
        for setting in args.settings or PARTS[args.part]:
            emit(run_setting(setting, step_args(args, args.batch, args.steps, args.warmup), root), args.json)


if __name__ == "__main__":
    main()
