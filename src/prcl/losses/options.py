"""The contrast's options, in one frozen object: what ``PRCLLoss`` and ``sample_contrast`` are told."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ContrastOptions:
    """Options of the PRCL contrast (docs/method.md). The defaults are the release's.

    The PRCL method builds this once from the config: every field but ``strong_threshold`` is the
    key of the same name in ``prcl.`` (``prcl.temperature`` ...); ``strong_threshold`` is
    ``method.strong_threshold``. The config checks the values; this object only carries them.

    Args:
        temperature: T; the anchor-key scores of the InfoNCE and the prototype-to-prototype scores
            that choose the negative classes are MLS / T. Default 100, the published value.
        num_queries: anchors drawn per class that has hard pixels, uniformly with replacement from
            them. Default 256.
        num_negatives: negatives per anchor: a class drawn from ``softmax_k(MLS(proto_c, proto_k) / T)``
            over the other present classes, then one of its valid pixels. Default 512.
        strong_threshold: a valid pixel is hard, so can be an anchor, when the student's probability of
            its own class is below this. Default 0.8.
        kernel: how the anchor-key scores are computed (the same numbers, speed only): "compiled"
            (torch.compile, fused gather), "chunked" (plain PyTorch over blocks of anchors) or "auto"
            (compiled, falling back to chunked where compilation fails). Default "auto".

        Beyond the released method (the defaults keep it):

        prototype_variance: "fused" (the release's) gives a prototype the fused variance
            ``1 / sum 1/var_i``, about 1/N of a pixel's for N pixels; "mean" the harmonic mean
            ``N / sum 1/var_i``, which does not shrink with the pixel count. Default "fused".
        global_prototypes: GDP, the extended PRCL: one Gaussian per class carried over training
            (``GlobalPrototypes``); each step's statistics are fused into it, and its prototypes serve
            as the positives and for the negative-class sampling. Default False.
        gdp_decay: GDP only; the share of the accumulated statistics forgotten per step, in [0, 1)
            (0: accumulate). Default 0.0.
        virtual_negatives: VN: for each anchor, this many samples from the prototype Gaussian of
            every other class that has a prototype (the global ones under GDP), appended to the
            negatives. Default 0 (none).
        vn_radius: VN only; r in the samples ``mu_k + r * eps * sqrt(var_k)``, eps ~ N(0, I).
            Default 1.0.
        vn_variance: VN only; the samples' key variance: "global", the prototype's ``var_k``, or
            "zero". Default "global".
    """

    temperature: float = 100.0
    num_queries: int = 256
    num_negatives: int = 512
    strong_threshold: float = 0.8
    kernel: str = "auto"
    prototype_variance: str = "fused"
    global_prototypes: bool = False
    gdp_decay: float = 0.0
    virtual_negatives: int = 0
    vn_radius: float = 1.0
    vn_variance: str = "global"
