"""`prcl predict` throughput: images per second by --batch, on a checkpoint of random weights.

Writes a checkpoint (``--encoder``, 21 classes, a probability head, random weights: the speed does
not depend on the values) and ``--images`` random pictures of ``--size`` pixels into a temporary
folder, then times :func:`prcl.commands.predict.predict_files` (decode, network, PNG outputs) once
per batch size, after one untimed warm-up run. Every run writes the same files.

    python benchmarks/bench_predict.py --device cpu --images 16 --batches 1 4
    python benchmarks/bench_predict.py --device cuda --images 64 --batches 1 4 8 16
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train_step import device_name  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--encoder", default="resnet101")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=[375, 500], metavar=("H", "W"),
                        help="picture height and width (default 375 500, a typical VOC image)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()

    from prcl.config import config_to_dict, load_config
    from prcl.checkpoint import save_checkpoint
    from prcl.commands.predict import predict_files
    from prcl.models import ProbabilityHead, build_segmenter

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as root:
        root_path = Path(root)
        cfg = load_config(None, [f"model.encoder={args.encoder}", "data.num_classes=21"])
        checkpoint = root_path / "model.pt"
        student = build_segmenter(args.encoder, 21, 16, weights=None)
        save_checkpoint(checkpoint, {"config": config_to_dict(cfg), "student": student.state_dict(),
                                     "probability_head": ProbabilityHead().state_dict()})
        pictures = root_path / "pictures"
        pictures.mkdir()
        rng = np.random.default_rng(0)
        for index in range(args.images):
            Image.fromarray(rng.integers(0, 256, (*args.size, 3), dtype=np.uint8)).save(pictures / f"{index:04d}.jpg")
        predict_files(checkpoint, [str(pictures)], root_path / "warm-up", device=args.device,
                      batch_size=args.batches[0], progress=False)
        device = torch.device(args.device)
        name = device_name(device)
        print(f"{name}, {args.encoder}, {args.images} pictures of {args.size[0]}x{args.size[1]}, threads "
              f"{torch.get_num_threads()}")
        print("| --batch | seconds | images/s |")
        print("|---:|---:|---:|")
        for batch_size in args.batches:
            started = time.perf_counter()
            result = predict_files(checkpoint, [str(pictures)], root_path / f"out{batch_size}", device=args.device,
                                   batch_size=batch_size, progress=False)
            seconds = time.perf_counter() - started
            assert len(result.written) == args.images and not result.failed
            print(f"| {batch_size} | {seconds:.2f} | {args.images / seconds:.2f} |", flush=True)


if __name__ == "__main__":
    main()
