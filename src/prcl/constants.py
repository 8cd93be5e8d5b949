"""Facts shared by several subpackages, defined once here (this module imports nothing).

``prcl.data``, ``prcl.models``, ``prcl.losses`` and ``prcl.infer`` all import from here, so none of
them has to import another for a constant (no import cycles, no second copy).
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
"""Per-channel RGB mean of ImageNet, for images scaled to [0, 1]."""

IMAGENET_STD = (0.229, 0.224, 0.225)
"""Per-channel RGB standard deviation of ImageNet, for images scaled to [0, 1]."""

IGNORE_INDEX = -1
"""Label value of ignored pixels in every tensor this package produces."""

__all__ = ["IGNORE_INDEX", "IMAGENET_MEAN", "IMAGENET_STD"]
