"""The segmenter's inference forward with and without the representation head, interleaved.

Evaluation, prediction, export, the teacher and the supervised and mean-teacher students run
``Segmenter(x, representation=False)``: only PRCL's student reads mu. This times both forwards
(random weights, eval mode, channels-last, batch 1) in turn and reports the median of each.

    python benchmarks/bench_forward.py --encoder tf_efficientnet_lite0 --size 96 --classes 6 --repeats 40
    python benchmarks/bench_forward.py --encoder resnet101 --size 321 --classes 21 --repeats 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import device_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()

    from prcl.models import build_segmenter

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    model = build_segmenter(args.encoder, args.classes, 16).to(device).eval().to(memory_format=torch.channels_last)
    image = torch.randn(1, 3, args.size, args.size, device=device).contiguous(memory_format=torch.channels_last)
    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        for index in range(args.repeats + 3):
            for representation in ((True, False) if index % 2 == 0 else (False, True)):
                sync()
                started = time.perf_counter()
                model(image, representation=representation)
                sync()
                if index >= 3:  # the first calls pick kernels
                    times[representation].append(time.perf_counter() - started)
    with_head, without = (1000 * statistics.median(times[k]) for k in (True, False))
    print(f"{device_name(device)}, {args.encoder}, {args.size} x {args.size}, batch 1, {args.repeats} repeats")
    print(f"with the representation head: {with_head:.1f} ms; without: {without:.1f} ms "
          f"({100 * (1 - without / with_head):.0f} % less)")


if __name__ == "__main__":
    main()
