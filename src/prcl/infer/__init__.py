"""Inference: the Predictor API and pictures of predictions (palettes, overlays, uncertainty maps)."""

from prcl.infer.predictor import Prediction, Predictor
from prcl.infer.visualize import class_palette, colorize, denormalize, heatmap, make_grid, overlay, palette

__all__ = [
    "Prediction",
    "Predictor",
    "class_palette",
    "colorize",
    "denormalize",
    "heatmap",
    "make_grid",
    "overlay",
    "palette",
]
