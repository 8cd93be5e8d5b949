"""PRCL losses: mutual likelihood score, distribution prototypes, contrastive and pseudo-label losses.

The weight of the contrastive loss over training (``ramp_weight``) lives in :mod:`prcl.schedules`.
"""

from .mls import mutual_likelihood_score
from .options import ContrastOptions
from .prcl import ContrastSample, PRCLLoss, sample_contrast
from .prototypes import GlobalPrototypes, distribution_prototypes, prototype_statistics
from .pseudo_label import pseudo_label_loss
from .scores import gathered_mls

__all__ = [
    "ContrastOptions",
    "ContrastSample",
    "GlobalPrototypes",
    "PRCLLoss",
    "sample_contrast",
    "distribution_prototypes",
    "gathered_mls",
    "mutual_likelihood_score",
    "prototype_statistics",
    "pseudo_label_loss",
]
