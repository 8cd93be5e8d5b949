"""PRCL losses: mutual likelihood score, distribution prototypes, contrastive and pseudo-label losses."""

from .mls import mutual_likelihood_score
from .prcl import ContrastSample, PRCLLoss, sample_contrast
from .prototypes import GlobalPrototypes, distribution_prototypes, prototype_statistics
from .pseudo_label import pseudo_label_loss
from .schedules import ramp_weight
from .scores import gathered_mls

__all__ = [
    "ContrastSample",
    "GlobalPrototypes",
    "PRCLLoss",
    "sample_contrast",
    "distribution_prototypes",
    "gathered_mls",
    "mutual_likelihood_score",
    "prototype_statistics",
    "pseudo_label_loss",
    "ramp_weight",
]
