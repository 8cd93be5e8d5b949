"""Training methods run by one generic trainer.

Adding a method: one file, one line in ``METHODS`` and its name in ``prcl.config.METHOD_NAMES`` (the names a
config accepts, kept torch-free there; tests/test_methods.py checks that the two agree, and holds every registered
method to the interface in TestMethodContract).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Method, Networks, PseudoLabelPictures, StepInput
from .mean_teacher import MeanTeacher
from .prcl import PRCL
from .supervised import Supervised

if TYPE_CHECKING:
    from prcl.config import Config

METHODS: dict[str, type[Method]] = {"supervised": Supervised, "mean_teacher": MeanTeacher, "prcl": PRCL}


def build_method(cfg: Config) -> Method:
    """The method named by ``cfg.method.name``."""
    return METHODS[cfg.method.name](cfg)


__all__ = ["METHODS", "MeanTeacher", "Method", "Networks", "PRCL", "PseudoLabelPictures", "StepInput", "Supervised",
           "build_method"]
