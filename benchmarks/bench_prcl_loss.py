"""PRCL loss speed and memory against one ResNet-101 student step, at the release's VOC setting.

Each measurement runs in a fresh subprocess; extra peak memory is the rise of peak RSS (CPU) or of
torch.cuda.max_memory_allocated (GPU) during the measured call over what the inputs already hold.

    python benchmarks/bench_prcl_loss.py [--device cpu|cuda] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

N, D, H, W, C, PRESENT = 4, 256, 81, 81, 21, (0, 3, 7, 12, 15, 20)


def loss_inputs(device):
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor(PRESENT)[torch.randint(0, len(PRESENT), (N, H, W), generator=g)]
    labels[torch.rand(N, H, W, generator=g) < 0.1] = -1
    mu = torch.randn(N, D, H, W, generator=g)
    var = torch.rand(N, D, H, W, generator=g) * 0.9 + 0.05
    valid = torch.rand(N, H, W, generator=g) > 0.2
    prob = torch.softmax(torch.randn(N, C, H, W, generator=g) * 2, 1)
    out = [t.to(device) for t in (mu, var, labels, valid, prob)]
    out[0].requires_grad_(), out[1].requires_grad_()
    return out


def peak_bytes(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_bytes(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def measure(what: str, device_name: str, repeats: int) -> dict:
    device = torch.device(device_name)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if what == "student":
        from prcl.models import build_segmenter

        model = build_segmenter("resnet101", num_classes=C, output_stride=16).to(device).train()
        x = torch.randn(2, 3, 321, 321, device=device)

        def step():
            out = model(x)
            (out.logits.mean() + out.mu.mean()).backward()
    else:
        mu, var, labels, valid, prob = loss_inputs(device)
        if what == "release":
            sys.path.insert(0, str(Path(__file__).parent))
            from release_algorithm import release_prcl_loss as loss_fn
        else:
            from prcl.losses import ContrastOptions, PRCLLoss

            loss_fn = PRCLLoss(ContrastOptions(kernel=what))

        def step():
            loss_fn(mu, var, labels, valid, prob).backward()
            mu.grad = var.grad = None

    step()  # warm-up (compilation, allocator)
    sync()
    base = current_bytes(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    return {"what": what, "seconds": statistics.median(times), "extra_peak_mb": (peak_bytes(device) - base) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only:
        print(json.dumps(measure(args.only, args.device, args.repeats)))
        return
    rows = {}
    for what in ("student", "compiled", "chunked", "release"):
        result = subprocess.run([sys.executable, __file__, "--only", what, "--device", args.device,
                                 "--repeats", str(args.repeats)], capture_output=True, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{what}: failed ({last})", file=sys.stderr)
            continue
        rows[what] = json.loads(result.stdout.strip().splitlines()[-1])
    student = rows["student"]["seconds"]
    print(f"device: {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'measurement':<44}{'seconds':>9}{'x student':>11}{'extra peak MB':>15}")
    names = {"student": "ResNet-101 student fwd+bwd, batch 2, 321x321", "compiled": "PRCLLoss fwd+bwd, compiled kernel",
             "chunked": "PRCLLoss fwd+bwd, chunked kernel", "release": "release algorithm fwd+bwd"}
    for what, row in rows.items():
        print(f"{names[what]:<44}{row['seconds']:>9.3f}{row['seconds'] / student:>11.2f}{row['extra_peak_mb']:>15.0f}")


if __name__ == "__main__":
    main()
