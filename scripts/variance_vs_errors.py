"""Where does a PRCL checkpoint's variance sit? Against the prediction's errors, the softmax entropy and label boundaries.

Scores a run's last checkpoint (the teacher and the probability head, as ``prcl eval`` does) on a
split, keeping every scored pixel (the demo's 100 images: under a million), and prints:
- the exact AUROC of the head's mean variance for "this pixel is wrong" (sort-based, ties counting
  one half), beside the histogram AUROC that evaluation reports (``prcl.metrics.uncertainty``);
- the Spearman rank correlation of the variance with the softmax entropy;
- the mean variance over right and wrong pixels, and over pixels within 3 px of a label boundary
  and the others, with the error rate of each.

    python scripts/variance_vs_errors.py runs/demo/prcl --split valid
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F


def exact_auroc(scores: torch.Tensor, wrong: torch.Tensor) -> float:
    """P(score of a wrong pixel > score of a right one), ties one half: the Mann-Whitney statistic."""
    _, inverse, counts = torch.unique(scores.double(), return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]  # mean rank of each tie group, from 1
    n_wrong, n_right = wrong.sum().double(), (~wrong).sum().double()
    return float((ranks[wrong].sum() - n_wrong * (n_wrong + 1) / 2) / (n_wrong * n_right))


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    def rank(x: torch.Tensor) -> torch.Tensor:
        return torch.argsort(torch.argsort(x)).double()
    return float(torch.corrcoef(torch.stack([rank(a), rank(b)]))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a PRCL run folder (config.yaml, checkpoints/last.pt)")
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    args = parser.parse_args()

    from prcl.config import load_config
    from prcl.engine.data_setup import build_run_data
    from prcl.infer.protocols import dense_maps, mean_variance
    from prcl.metrics import UncertaintyMeter
    from prcl.infer import Predictor

    cfg = load_config(f"{args.run}/config.yaml", [])
    data = build_run_data(cfg)
    dataset = data.valid if args.split == "valid" else data.test
    predictor = Predictor.from_checkpoint(f"{args.run}/checkpoints/last.pt", device="cpu")
    if predictor.probability_head is None:
        raise SystemExit(f"{args.run} has no probability head: use a PRCL run")
    classes = cfg.data.num_classes
    map_fn = dense_maps(predictor.model, classes, extra=mean_variance(predictor.probability_head))
    meter = UncertaintyMeter(classes)
    variances, wrongs, entropies, boundaries = [], [], [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            label = item["mask"].long()
            maps = map_fn(item["image"][None].float())
            probabilities, variance = maps[0, :classes], maps[0, classes]
            meter.update(maps[:, :classes], label[None], maps[:, classes])
            entropy = -(probabilities.clamp_min(1e-12).log() * probabilities).sum(0)
            padded = label.float()[None, None]
            boundary = (F.max_pool2d(padded, 7, 1, 3) != -F.max_pool2d(-padded, 7, 1, 3))[0, 0]
            scored = label >= 0
            variances.append(variance[scored])
            wrongs.append((probabilities.argmax(0) != label)[scored])
            entropies.append(entropy[scored])
            boundaries.append(boundary[scored])
    variance, wrong, entropy, boundary = (torch.cat(x) for x in (variances, wrongs, entropies, boundaries))
    print(f"{args.run}, {args.split}: {variance.numel()} pixels, error rate {wrong.float().mean():.3f}")
    print(f"variance AUROC for errors: exact {exact_auroc(variance, wrong):.4f}, "
          f"histogram {meter.result()['auroc_variance']:.4f}")
    print(f"Spearman(variance, softmax entropy): {spearman(variance, entropy):.3f}")
    print(f"mean variance: right {variance[~wrong].mean():.4f}, wrong {variance[wrong].mean():.4f}; "
          f"near a boundary {variance[boundary].mean():.4f} (error rate {wrong[boundary].float().mean():.3f}), "
          f"elsewhere {variance[~boundary].mean():.4f} (error rate {wrong[~boundary].float().mean():.3f})")


if __name__ == "__main__":
    main()
