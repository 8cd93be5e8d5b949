"""Training methods sharing one trainer: supervised, mean_teacher and prcl."""

from prcl.config import Config

from .base import Method, Networks, StepInput
from .mean_teacher import MeanTeacher
from .prcl import PRCL
from .supervised import Supervised

METHODS = {"supervised": Supervised, "mean_teacher": MeanTeacher, "prcl": PRCL}


def build_method(cfg: Config) -> Method:
    """The method named by ``cfg.method.name``."""
    cls = METHODS[cfg.method.name]
    return cls() if cls is Supervised else cls(cfg)


__all__ = ["METHODS", "MeanTeacher", "Method", "Networks", "PRCL", "StepInput", "Supervised", "build_method"]
