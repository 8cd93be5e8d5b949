"""The strong view's cost per call: the release-matched view, and its colour jitter in a random order
per image (every operation computed for the whole batch at each of the four positions) against one
fixed order.

    python benchmarks/bench_strong_view.py --batch 2 --size 321 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from prcl.data.strong_view import StrongView


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, default=321)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g)
    labels = torch.randint(0, 21, (args.batch, args.size, args.size), generator=g)
    confidence = torch.rand(args.batch, args.size, args.size, generator=g)
    for order in ("random", "fixed"):
        view = StrongView(jitter_order=order, jitter_p=1.0, num_classes=21)
        times = []
        for k in range(args.repeats + 2):
            start = time.perf_counter()
            view(images, labels, confidence, torch.Generator().manual_seed(k))
            times.append(time.perf_counter() - start)
        print(f"jitter order {order}: median {1000 * statistics.median(times[2:]):.1f} ms per call "
              f"({args.batch} x 3 x {args.size} x {args.size}, {torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
