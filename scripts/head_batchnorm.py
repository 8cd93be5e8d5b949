"""What the probability head's BatchNorm batch does to the variances of a trained PRCL run.

The release (and prcl since 2026-12-06) calls the head once per step on both passes' features, so
its BatchNorm normalises the labeled and strong-view pixels together; prcl used to call it once per
pass. For a run's checkpoint this draws training steps as the trainer draws them (teacher
pseudo-labels, strong view, student passes in train mode) and feeds the same features to the head
in train mode both ways, from the same running statistics. It prints the mean variance of the
labeled and the strong-view pixels, its spread over pixels, and how far the two ways differ.

    python scripts/head_batchnorm.py runs/demo/prcl --steps 20
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from prcl.config import load_config
from prcl.checkpoint import load_checkpoint
from prcl.engine.data_setup import build_run_data
from prcl.engine.sampling import mixed_seed, step_loader
from prcl.methods import StepInput, build_method
from prcl.models import build_segmenter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a PRCL run folder (config.yaml, checkpoints/last.pt)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    cfg = load_config(args.run / "config.yaml", ["train.device=cpu"])
    method = build_method(cfg)
    nets = method.build_networks(build_segmenter(cfg.model.encoder, cfg.data.num_classes, cfg.model.output_stride))
    state = load_checkpoint(args.run / "checkpoints" / "last.pt")
    for name, net in nets.items():
        net.load_state_dict(state[name])
    data = build_run_data(cfg)
    labeled = iter(step_loader(data.labeled, cfg.data.batch_size, cfg.train.seed, 0, 0))
    unlabeled = iter(step_loader(data.unlabeled, cfg.data.unlabeled_batch_size, cfg.train.seed + 1, 0, 0))
    rows: dict[str, list[float]] = {}
    for step in range(args.steps):
        lab, unl = next(labeled), next(unlabeled)
        batch = StepInput(lab["image"], lab["mask"], unl["image"], step,
                          torch.Generator().manual_seed(mixed_seed(cfg.train.seed, step, 0)))
        nets["student"].train()
        with torch.no_grad():
            outputs = method.student_pass(nets, batch).outputs
            features = [out.features for out in outputs]
            head = nets["probability_head"].train()
            per_pass = copy.deepcopy(head)
            joint = head(torch.cat(features))
            separate = torch.cat([per_pass(f) for f in features])
        num_labeled = batch.labeled_images.shape[0]
        for way, var in (("joint", joint), ("per pass", separate)):
            rows.setdefault(f"{way}: mean variance, labeled", []).append(float(var[:num_labeled].mean()))
            rows.setdefault(f"{way}: mean variance, strong view", []).append(float(var[num_labeled:].mean()))
            rows.setdefault(f"{way}: std over pixels and dimensions", []).append(float(var.std()))
        rows.setdefault("mean |joint - per pass| / mean variance", []).append(
            float((joint - separate).abs().mean() / joint.mean()))
    print(f"{args.run}: {args.steps} steps")
    for name, values in rows.items():
        print(f"  {name:<42} {statistics.mean(values):.5f}")


if __name__ == "__main__":
    main()
