"""Supervised baseline: labeled images only, the same network and schedule."""

from __future__ import annotations

import torch

from .base import Method, Networks, StepInput, supervised_loss


class Supervised(Method):
    name = "supervised"

    def train_step(self, nets: Networks, batch: StepInput) -> dict[str, torch.Tensor]:
        out = nets["student"](batch.labeled_images, representation=False)
        loss = supervised_loss(out.logits, batch.labels)
        return {"loss": loss, "sup": loss.detach()}
