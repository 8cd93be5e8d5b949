"""The softmax's uncertainty measures for any run's checkpoint, probability head or not.

``prcl eval`` reports the uncertainty measures for networks with a probability head only; this
scores the softmax baselines (AUROC of ``1 - max p`` and of the entropy for "this pixel is wrong",
the ECE) with the same meter (``prcl.metrics.UncertaintyMeter``) for any run, e.g. PRCL's
deterministic rows, on a split of its data (whole images).

    python scripts/softmax_uncertainty.py runs/regime_ablation/runs/prcl_deterministic_seed0 --split test
"""

from __future__ import annotations

import argparse

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (config.yaml, checkpoints/last.pt)")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    args = parser.parse_args()

    from prcl.config import load_config
    from prcl.engine.data_setup import build_run_data
    from prcl.infer import Predictor
    from prcl.infer.protocols import dense_maps
    from prcl.metrics import UncertaintyMeter

    for run in args.runs:
        cfg = load_config(f"{run}/config.yaml", [])
        data = build_run_data(cfg)
        dataset = data.valid if args.split == "valid" else data.test
        predictor = Predictor.from_checkpoint(f"{run}/checkpoints/last.pt", device="cpu")
        map_fn = dense_maps(predictor.model.eval(), cfg.data.num_classes)
        meter = UncertaintyMeter(cfg.data.num_classes)
        with torch.no_grad():
            for index in range(len(dataset)):
                item = dataset[index]
                meter.update(map_fn(item["image"][None].float()), item["mask"][None].long())
        result = meter.result()
        print(f"{run} ({args.split}): " + ", ".join(
            f"{key} {value:.3f}" for key, value in result.items() if key != "pixels" and value is not None))


if __name__ == "__main__":
    main()
