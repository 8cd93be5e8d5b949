"""The PRCL score kernel alone: compiled forward and backward, at the size of a VOC step's contrast.

A anchors (256 per class, 4 classes), K = 1 + 512 keys each from a pool of P valid pixels, D = 256;
random inputs. Reported: the median seconds of ``--repeats`` calls of each, after two warm-up calls
(the first compiles).

    python benchmarks/bench_score_kernel.py --device cpu
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--anchors", type=int, default=1024)
    parser.add_argument("--keys", type=int, default=513)
    parser.add_argument("--pool", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    from prcl.losses.scores import _compiled_kernels

    device, dim = torch.device(args.device), 256
    g = torch.Generator().manual_seed(0)
    anchor_mu = F.normalize(torch.randn(args.anchors, dim, generator=g), dim=1).to(device)
    anchor_var = (torch.rand(args.anchors, dim, generator=g) * 0.5 + 1e-3).to(device)
    key_mu = F.normalize(torch.randn(args.pool, dim, generator=g), dim=1).to(device)
    key_var = (torch.rand(args.pool, dim, generator=g) * 0.5 + 1e-3).to(device)
    key_index = torch.randint(0, args.pool, (args.anchors, args.keys), generator=g).to(device)
    grad_scores = torch.randn(args.anchors, args.keys, generator=g).to(device)
    forward, backward = _compiled_kernels()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    calls = {
        "forward": lambda: forward(anchor_mu, anchor_var, key_mu, key_var, key_index),
        "backward": lambda: backward(anchor_mu, anchor_var, key_mu, key_var, key_index.t().contiguous(),
                                     grad_scores.t().contiguous()),
    }
    print(f"{args.device}, A={args.anchors} K={args.keys} P={args.pool} D={dim}, threads {torch.get_num_threads()}")
    for name, call in calls.items():
        times = []
        for index in range(2 + args.repeats):
            sync()
            started = time.perf_counter()
            call()
            sync()
            if index >= 2:
                times.append(time.perf_counter() - started)
        print(f"{name}: {statistics.median(times):.3f} s (median of {args.repeats})", flush=True)


if __name__ == "__main__":
    main()
