"""A run's uncertainty on a split: the softmax's measures, and where a PRCL head's variance sits.

Scores each run's last checkpoint (the teacher, and the probability head where there is one, as
``prcl eval`` does) on a split, whole images, and prints for every run the softmax's measures from
the meter evaluation uses (``prcl.metrics.UncertaintyMeter``: AUROC of ``1 - max p`` and of the
entropy for "this pixel is wrong", ECE, error rate) — for runs without a head too, which ``prcl
eval`` does not measure. With a head, keeping every scored pixel (the demo's 100 images: under a
million), also:
- the exact AUROC of the head's mean variance (sort-based, ties counting one half), beside the
  meter's histogram AUROC;
- the Spearman rank correlation of the variance with the softmax entropy;
- the mean variance over right and wrong pixels, and over pixels within 3 px of a label boundary
  and the others, with the error rate of each.

    python scripts/variance_vs_errors.py runs/demo/prcl --split valid
    python scripts/variance_vs_errors.py runs/regime_ablation/runs/prcl_deterministic_seed{0,1,2} --split test
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


def report(run: str, split: str) -> None:
    from prcl.config import load_config
    from prcl.engine.data_setup import build_run_data
    from prcl.infer import Predictor
    from prcl.infer.protocols import class_map, dense_maps, mean_variance
    from prcl.metrics import UncertaintyMeter, normalised_entropy

    cfg = load_config(f"{run}/config.yaml", [])
    data = build_run_data(cfg)
    dataset = data.valid if split == "valid" else data.test
    predictor = Predictor.from_checkpoint(f"{run}/checkpoints/last.pt", device="cpu")
    head = predictor.probability_head
    classes = cfg.data.num_classes
    map_fn = dense_maps(predictor.model, classes, extra=mean_variance(head) if head is not None else None)
    meter = UncertaintyMeter(classes)
    variances, wrongs, entropies, boundaries = [], [], [], []
    with torch.no_grad():
        for index in range(len(dataset)):
            item = dataset[index]
            label = item["mask"][None].long()
            maps = map_fn(item["image"][None].float())
            probabilities = maps[:, :classes]
            variance = maps[:, classes] if head is not None else None
            meter.update(probabilities, label, variance)
            if variance is None:
                continue
            padded = label.float()[:, None]
            boundary = F.max_pool2d(padded, 7, 1, 3) != -F.max_pool2d(-padded, 7, 1, 3)
            scored = label >= 0
            variances.append(variance[scored])
            wrongs.append((class_map(probabilities) != label)[scored])
            entropies.append(normalised_entropy(probabilities)[scored])
            boundaries.append(boundary[:, 0][scored])
    result = meter.result()
    print(f"{run} ({split}): " + ", ".join(f"{key} {value:.4f}" for key, value in result.items()
                                           if key != "pixels" and value is not None))
    if head is None:
        return
    variance, wrong, entropy, boundary = (torch.cat(x) for x in (variances, wrongs, entropies, boundaries))
    print(f"  variance AUROC for errors: exact {exact_auroc(variance, wrong):.4f}, "
          f"histogram {result['auroc_variance']:.4f}")
    print(f"  Spearman(variance, softmax entropy): {spearman(variance, entropy):.3f}")
    print(f"  mean variance: right {variance[~wrong].mean():.4f}, wrong {variance[wrong].mean():.4f}; "
          f"near a boundary {variance[boundary].mean():.4f} (error rate {wrong[boundary].float().mean():.3f}), "
          f"elsewhere {variance[~boundary].mean():.4f} (error rate {wrong[~boundary].float().mean():.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders (config.yaml, checkpoints/last.pt)")
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    args = parser.parse_args()
    for run in args.runs:
        report(run, args.split)


if __name__ == "__main__":
    main()
