"""The authors' PRCL loss algorithm, re-expressed for comparison only (not used by the package).

It follows the release's steps and costs: one-hot labels, a Python loop over classes, per-class
boolean gathers, negatives sampled by a per-anchor, per-class NumPy loop, and the negative keys
materialised as (num_queries, 1 + num_negatives, D) tensors that autograd keeps for the backward.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _mls(mu_a, mu_b, var_a, var_b):
    mu_a, mu_b = F.normalize(mu_a, dim=-1), F.normalize(mu_b, dim=-1)
    s = var_a + var_b
    return -0.5 * ((mu_a - mu_b) ** 2 / s + torch.log(s)).mean(-1)


def _negative_positions(counts_per_anchor: torch.Tensor, class_sizes: list[int]) -> list[int]:
    starts = np.cumsum([0] + class_sizes)
    positions: list[int] = []
    for row in counts_per_anchor.tolist():  # one anchor at a time, one class at a time
        for j, count in enumerate(row):
            positions += np.random.randint(starts[j], starts[j + 1], size=count).tolist()
    return positions


def release_prcl_loss(mu, var, labels, valid, prob, num_queries=256, num_negatives=512,
                        temperature=100.0, strong_threshold=0.8):
    """Same inputs as prcl.losses.PRCLLoss.forward."""
    num_classes, dim = prob.shape[1], mu.shape[1]
    one_hot = F.one_hot(labels.clamp_min(0), num_classes).permute(0, 3, 1, 2) * (labels >= 0)[:, None]
    valid_pixels = one_hot * valid[:, None]
    mu, var = mu.permute(0, 2, 3, 1), var.permute(0, 2, 3, 1)
    all_mu, all_var, hard_mu, hard_var, sizes, proto_mu, proto_var = [], [], [], [], [], [], []
    for c in range(num_classes):
        mask = valid_pixels[:, c].bool()
        if mask.sum() == 0:
            continue
        hard = (prob[:, c] < strong_threshold) & mask
        with torch.no_grad():
            pv = 1 / torch.sum(1 / var[mask], dim=0, keepdim=True)
            proto_var.append(pv)
            proto_mu.append(torch.sum(pv / var[mask] * mu[mask], dim=0, keepdim=True))
        all_mu.append(mu[mask]), all_var.append(var[mask])
        hard_mu.append(mu[hard]), hard_var.append(var[hard])
        sizes.append(int(mask.sum()))
    if len(sizes) <= 1:
        return (mu.sum() + var.sum()) * 0
    proto_mu, proto_var = torch.cat(proto_mu), torch.cat(proto_var)
    present = len(sizes)
    loss = mu.new_zeros(())
    for i in range(present):
        if len(hard_mu[i]) == 0:
            continue
        pick = torch.randint(len(hard_mu[i]), (num_queries,))
        anchor_mu, anchor_var = hard_mu[i][pick], hard_var[i][pick]
        with torch.no_grad():
            rolled = list(range(i, present)) + list(range(i))
            sim = _mls(proto_mu[i : i + 1], proto_mu[rolled[1:]], proto_var[i : i + 1], proto_var[rolled[1:]])
            drawn = torch.distributions.Categorical(probs=torch.softmax(sim / temperature, 0)).sample(
                (num_queries, num_negatives))
            counts = torch.stack([(drawn == c).sum(1) for c in range(present - 1)], dim=1)
            positions = _negative_positions(counts, sizes[i + 1 :] + sizes[:i])
            neg_mu = torch.cat(all_mu[i + 1 :] + all_mu[:i])[positions].reshape(num_queries, num_negatives, dim)
            neg_var = torch.cat(all_var[i + 1 :] + all_var[:i])[positions].reshape(num_queries, num_negatives, dim)
            keys_mu = torch.cat([proto_mu[i].expand(num_queries, 1, dim), neg_mu], 1)
            keys_var = torch.cat([proto_var[i].expand(num_queries, 1, dim), neg_var], 1)
        logits = _mls(anchor_mu.unsqueeze(1), keys_mu, anchor_var.unsqueeze(1), keys_var)
        positive = torch.zeros(num_queries, dtype=torch.long, device=logits.device)  # the prototype is key 0
        loss = loss + F.cross_entropy(logits / temperature, positive)
    return loss / present
