"""Evaluation's cost with the uncertainty measures against without them, interleaved.

Builds a segmenter (``--encoder``, random weights: the speed does not depend on the values) and
PRCL's probability head, and ``--images`` random images with random masks of ``--size`` pixels.
Each round scores them all twice with :func:`prcl.engine.evaluate.evaluate`, once as a mean-teacher
checkpoint is scored (mIoU only) and once as a PRCL checkpoint is (the head's mean variance, the
histograms of three uncertainty scores and the calibration bins), the order alternating between
rounds so that a drift of the machine's speed falls on both alike. Reported: the median seconds per
image of each and the median over rounds of the per-round ratio (with / without).

    python benchmarks/bench_evaluate.py --device cpu --images 8 --rounds 5
    python benchmarks/bench_evaluate.py --device cpu --encoder tf_efficientnet_lite0 --size 96 96 --images 100 --classes 6
    python benchmarks/bench_evaluate.py --device cpu --run runs/demo/prcl --rounds 5
    python benchmarks/bench_evaluate.py --device cpu --parts --encoder tf_efficientnet_lite0 --size 96 96 --classes 6

``--parts`` times the pieces of the uncertainty measures alone instead, per image (one call each, median of
400 after 20): the head's mean variance as evaluation runs it (folded once, its first layer's context part at
the ASPP's coarse size), folded from the 304-channel F alone, and as its eval-mode forward gives it, the
meter's update (per image, over 7 updates and a read of the counts: small images are queued and counted
together), and the entropy as the meter computes it and as ``torch.special.entr`` does.
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
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, nargs=2, default=[321, 321], metavar=("H", "W"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--run", help="a PRCL run folder: time evaluate_model on its valid split instead")
    parser.add_argument("--parts", action="store_true", help="time the uncertainty measures' pieces alone")
    args = parser.parse_args()
    if args.parts:
        time_parts(args)
        return

    from prcl.engine.evaluate import evaluate
    from prcl.infer.protocols import mean_variance
    from prcl.models import ProbabilityHead, build_segmenter

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if args.run:
        from prcl.config import load_config
        from prcl.engine.data_setup import build_run_data
        from prcl.engine.evaluate import evaluate_model
        from prcl.infer import Predictor

        cfg = load_config(f"{args.run}/config.yaml", [])
        dataset = build_run_data(cfg).valid
        predictor = Predictor.from_checkpoint(f"{args.run}/checkpoints/last.pt", device=device)
        model, head = predictor.model, predictor.probability_head
        if head is None:
            raise SystemExit(f"{args.run} has no probability head: use a PRCL run")
        images, described = len(dataset), f"{args.run}, valid split ({len(dataset)} images from disk)"

        def evaluate_once(with_head: bool) -> dict:
            return evaluate_model(model, dataset, cfg, device, probability_head=head if with_head else None)
    else:
        torch.manual_seed(0)
        model = build_segmenter(args.encoder, args.classes, 16).to(device).eval()
        head = ProbabilityHead().to(device).eval()
        generator = torch.Generator().manual_seed(0)
        height, width = args.size
        loader = [{"image": torch.randn(1, 3, height, width, generator=generator),
                   "mask": torch.randint(-1, args.classes, (1, height, width), generator=generator)}
                  for _ in range(args.images)]
        images = args.images
        described = (f"{args.encoder}, {args.images} random images of {height} x {width}, {args.classes} classes")

        def evaluate_once(with_head: bool) -> dict:
            return evaluate(model, loader, args.classes, device, variance=mean_variance(head) if with_head else None)

    def timed(with_head: bool) -> float:
        sync()
        started = time.perf_counter()
        result = evaluate_once(with_head)
        sync()
        assert ("uncertainty" in result) == with_head
        return (time.perf_counter() - started) / images

    timed(False)  # warm-up: first calls allocate and pick kernels
    timed(True)
    without, with_, ratios = [], [], []
    for round_index in range(args.rounds):
        order = (False, True) if round_index % 2 == 0 else (True, False)
        seconds = {with_head: timed(with_head) for with_head in order}
        without.append(seconds[False])
        with_.append(seconds[True])
        ratios.append(seconds[True] / seconds[False])
    print(f"{device_name(device)}, {described}, {args.rounds} rounds")
    print(f"without uncertainty: {1000 * statistics.median(without):.1f} ms per image")
    print(f"with uncertainty:    {1000 * statistics.median(with_):.1f} ms per image")
    print(f"with / without, median of per-round ratios: {statistics.median(ratios):.3f} "
          f"(per round: {', '.join(f'{r:.3f}' for r in ratios)})")


def time_parts(args: argparse.Namespace) -> None:
    from prcl.metrics import UncertaintyMeter, normalised_entropy
    from prcl.models import ProbabilityHead, build_segmenter

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def median_ms(fn) -> float:
        for _ in range(20):
            fn()
        times = []
        for _ in range(400):
            sync()
            started = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - started)
        return 1000 * statistics.median(times)

    torch.manual_seed(0)
    height, width = args.size
    model = build_segmenter(args.encoder, args.classes, 16).to(device).eval()
    head = ProbabilityHead().to(device).eval()
    image = torch.randn(1, 3, height, width, device=device)
    with torch.no_grad():
        output = model(image, representation=False)
        features, context = output.features, output.context
        probabilities = torch.softmax(torch.randn(1, args.classes, height, width, device=device) * 2, dim=1)
        target = torch.randint(-1, args.classes, (1, height, width), device=device)
        variance = torch.rand(1, height, width, device=device)
        prediction = probabilities.argmax(dim=1)
        meter = UncertaintyMeter(args.classes, device)
        folded = head.folded_mean_variance()
        print(f"{device_name(device)}, {args.encoder}, one {height} x {width} image, feature map "
              f"{tuple(features.shape[-2:])}, {args.classes} classes; ms per call, median of 400")
        print(f"head, folded, coarse context:    {median_ms(lambda: folded(features, context)):.3f}  (evaluation)")
        print(f"head, folded, from F only:       {median_ms(lambda: folded(features)):.3f}")
        print(f"head, eval-mode forward + mean:  {median_ms(lambda: head(features).mean(dim=1)):.3f}")

        def seven_updates() -> None:
            for _ in range(7):
                meter.update(probabilities, target, variance, prediction=prediction)
            meter.calibration  # reading the counts counts what the queue holds

        print(f"meter, per update:               {median_ms(seven_updates) / 7:.3f}  (7 updates and a read)")
        print(f"entropy, normalised_entropy:     {median_ms(lambda: normalised_entropy(probabilities)):.3f}")
        print(f"entropy, torch.special.entr:     "
              f"{median_ms(lambda: torch.special.entr(probabilities).sum(dim=1)):.3f}")


if __name__ == "__main__":
    main()
