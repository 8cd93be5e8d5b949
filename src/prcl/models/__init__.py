"""Models: timm encoders with local or fetched ImageNet weights, DeepLabV3+ student, probability head, EMA teacher."""

from prcl.models.deeplab import ASPP, Segmenter, SegmenterOutput, build_segmenter
from prcl.models.encoders import Encoder, build_encoder
from prcl.models.imagenet import fetch_imagenet, fetch_weights
from prcl.models.probability_head import ProbabilityHead
from prcl.models.teacher import ema_decay, ema_update, make_teacher, unwrap_model
from prcl.models.weights import efficientnet_lite0_weights_path, load_encoder_weights

__all__ = [
    "ASPP",
    "Encoder",
    "ProbabilityHead",
    "Segmenter",
    "SegmenterOutput",
    "build_encoder",
    "build_segmenter",
    "efficientnet_lite0_weights_path",
    "fetch_imagenet",
    "fetch_weights",
    "ema_decay",
    "ema_update",
    "load_encoder_weights",
    "make_teacher",
    "unwrap_model",
]
