"""Typed configuration: a pydantic schema, YAML files with ``_base_`` chains, ``key.sub=value`` overrides.

Layers merge in order, each checked (type, choice, range) as it is merged: the defaults below, a YAML file and the
``_base_`` files it names (prcl.yaml_files), then overrides read as YAML (``null``/``none`` mean null). Then
``resolve_config`` fills in what was left null (num_classes, the unlabeled batch, eval window and stride, the schedule:
prcl.schedules) and ``{section.key}`` in train.out_dir, so a saved config.yaml loads back equal. Every mistake
is a ``prcl.errors.UserError``: one line naming the key and the file or override it came from.
"""

import math
import os
import string
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from prcl.devices import DEVICE_PATTERN
from prcl.errors import UserError, cut, shown
from prcl.io import atomic_write
from prcl.schedules import resolve_schedule
from prcl.yaml_files import changed_keys, merge_layer, parse_value, read_layers, unknown_key, write_yaml

DATASET_NUM_CLASSES = {"voc": 21, "cityscapes": 19}

# The names method.name accepts: those of the registry prcl.methods.METHODS, in its order (a test checks that they
# agree), written out here so that reading a config imports neither torch nor the methods.
METHOD_NAMES = ("supervised", "mean_teacher", "prcl")


def _must(text: str, test: Callable[[Any], bool]) -> AfterValidator:
    """A check on one key, failing as '<key> must <text>, got <value>'."""
    def check(value: Any) -> Any:
        if not test(value):
            raise PydanticCustomError("must", text, {"value": value})
        return value
    return AfterValidator(check)


# Keys are strict (an int is taken for a float), except: an int key takes 1e4, a nullable key None/none as null.
_T = TypeVar("_T")
Maybe = Annotated[_T | None, BeforeValidator(lambda v: None if v in ("None", "none") else v)]
Int = Annotated[int, BeforeValidator(lambda v: int(v) if isinstance(v, float) and v.is_integer() else v)]
Positive = Annotated[float, _must("be a positive number", lambda v: math.isfinite(v) and v > 0)]
NonNegative = Annotated[float, _must("be >= 0", lambda v: math.isfinite(v) and v >= 0)]
Unit = Annotated[float, _must("be in [0, 1]", lambda v: 0 <= v <= 1)]
Fraction = Annotated[float, _must("be in [0, 1)", lambda v: 0 <= v < 1)]

# Upper (and a few lower) bounds: values past them are typos, and each would end in a traceback or a runaway
# allocation instead of a message (docs/usage.md, "Value ranges", says why each is where it is).
MAX_SIDE = 4096  # pixels of a crop, a sliding window, a demo image (Cityscapes, the largest here: 1024 x 2048)
MAX_SCALE = 8.0  # an image rescale factor (training scale ranges, eval scales)
MAX_LR = 10.0  # SGD learning rates: the release's are 3.2e-3 and 5e-5; 1e300 overflows the weights at once
# prcl.temperature: at T = 1e-3 two MLS scores 0.1 apart already weigh exp(-100), below float32's smallest
# normal, so the negative sampling and the InfoNCE are one-hot; a smaller T sharpens nothing more and only brings
# MLS / T towards float32's overflow (|MLS| reaches ~1e8 for fused prototype variances; T = 1e-300 is 0 in float32).
MIN_TEMPERATURE = 1e-3
MAX_DEMO_IMAGES = 100_000  # images of each demo split: the demo renders and writes every one (its default: 600)
# prcl.num_queries x prcl.num_negatives: the contrast scores num_queries x (1 + num_negatives) pairs per class
# (the release: 256 x 512 = 2^17); 2^22 keeps the scores of 21 classes near 0.35 GB.
MAX_CONTRAST_PAIRS = 2**22
MIN_VARIANCE_SCALE, MAX_VARIANCE_SCALE = 1e-6, 1e6  # 1e-300 made every variance 0 (log 0 in the score)
MAX_WEIGHT_DECAY = 1.0  # an SGD weight decay (the release's: 5e-4); above 1 it shrinks the weights past zero
MAX_SEED = 2**32 - 1  # seeds: numpy takes non-negative ones, and 32 bits is the range every RNG here accepts
NAME_MAX, PATH_MAX = 255, 4096  # bytes in one file name and in a whole path (Linux's limits)
Scales = Annotated[list[float], _must(f"be [low, high] with 0 < low <= high <= {MAX_SCALE:g}",
                                      lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= MAX_SCALE)]
Scale = Annotated[Positive, _must(f"be <= {MAX_SCALE:g}", lambda v: v <= MAX_SCALE)]
AT_MOST_MAX_LR = _must(f"be <= {MAX_LR:g} (an SGD learning rate)", lambda v: v <= MAX_LR)


def AtLeast(low: int) -> Any:
    return Annotated[Int, _must(f"be >= {low}", lambda v: v >= low)]


def Between(low: int, high: int) -> Any:
    return Annotated[AtLeast(low), _must(f"be <= {high}", lambda v: v <= high)]


Seed = Between(0, MAX_SEED)


def check_unique_names(names: list[str], where: str) -> None:
    """UserError naming the first class name ``where`` (a key or a file) gives twice."""
    for index, name in enumerate(names):
        if name in names[:index]:
            raise UserError(f"{where} names {name!r} twice (classes {names.index(name)} and {index}): "
                            "give every class its own name")


def is_rgb(value: Any) -> bool:
    """Whether ``value`` is a colour as class colours are written: three integers 0..255 (R, G, B)."""
    return (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value))


RGB = Annotated[Any, _must("be three integers 0..255 (R, G, B), e.g. [255, 0, 0]", is_rgb)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class DemoConfig(_Section):
    """The embedded demo dataset's generator (all tunable; small so that a CPU run is quick)."""

    image_size: Between(32, MAX_SIDE) = 96
    num_classes: AtLeast(2) = 6
    num_train: Between(1, MAX_DEMO_IMAGES) = 600
    num_valid: Between(1, MAX_DEMO_IMAGES) = 100
    num_test: Between(0, MAX_DEMO_IMAGES) = 50
    seed: Seed = 0


class DataConfig(_Section):
    dataset: Literal["demo", "voc", "cityscapes", "folder"] = "demo"
    root: Maybe[str] = None
    splits: Maybe[str] = None  # folder holding <num_labels>/<split_seed>/*_filename.txt
    num_labels: AtLeast(1) = 662
    split_seed: Seed = 3407
    num_classes: Maybe[AtLeast(2)] = None  # None: voc 21, cityscapes 19, demo demo.num_classes
    crop_size: Between(32, MAX_SIDE) = 321
    # labeled images per process; BatchNorm (the ASPP pooling branch sees one value per image) needs 2
    batch_size: AtLeast(2) = 2
    unlabeled_batch_size: Maybe[AtLeast(2)] = None  # None: batch_size
    scale_range: Scales = Field(default_factory=lambda: [0.5, 1.5])
    num_workers: AtLeast(0) = 2
    # The classes' names and colours, in class index order (one per class); null: a classes.yaml or classes.txt
    # in data.root (folder datasets), else the dataset's own (VOC, Cityscapes, demo) or class_0.. and the VOC map.
    class_names: Maybe[list[str]] = None
    class_colors: Maybe[list[RGB]] = None  # [[R, G, B], ...]
    demo: DemoConfig = Field(default_factory=DemoConfig)


class ModelConfig(_Section):
    encoder: Annotated[str, _must("name an encoder, e.g. resnet101", lambda v: bool(v.strip()))] = "resnet101"
    output_stride: Literal[8, 16] = 16
    # None: random init; a local checkpoint path; or "imagenet": the encoder's published ImageNet file, fetched once
    # into torch's or timm's cache (docs/usage.md, "Backbone weights"); read only when a run starts, not on resume
    weights: Maybe[str] = None


def _registered_method(name: str) -> str:
    """A name in ``METHOD_NAMES`` (adding a method: one file, one registry line and its name there)."""
    if name not in METHOD_NAMES:
        raise PydanticCustomError("literal_error", "unknown method", {"expected": " or ".join(METHOD_NAMES)})
    return name


class MethodConfig(_Section):
    name: Annotated[str, AfterValidator(_registered_method)] = "prcl"  # supervised | mean_teacher | prcl
    ema_alpha: Unit = 0.99
    # Confidence threshold of the pseudo-label loss (name kept from the release): each unlabeled image's
    # loss is weighted by the share of its pixels whose teacher confidence is at least this.
    un_threshold: Unit = 0.97
    # prcl: an unlabeled pixel takes part in the contrast when its pseudo-label's confidence reaches this.
    weak_threshold: Unit = 0.7
    strong_threshold: Unit = 0.8  # prcl: the contrast's anchors are below it (prcl.losses.ContrastOptions)
    mix: Literal["classmix", "cutmix", "cutout", "none"] = "classmix"
    strong_scale_range: Scales = Field(default_factory=lambda: [0.5, 1.5])
    # The strong view's padding where the rescale shrinks the image: reflect (the release) or zeros (the mean colour).
    strong_padding: Literal["reflect", "zeros"] = "reflect"
    # Confidences as the release's 8-bit round trip leaves them, floor(255 q) / 255 (thresholds 248/255, 179/255).
    quantise_confidence: bool = True
    # separate: the student sees the labeled batch, then the strong view, in two forward passes (the
    # release; BatchNorm statistics per batch); joint: one pass over both concatenated.
    student_passes: Literal["separate", "joint"] = "separate"


class PRCLConfig(_Section):
    # The contrast's options: each one's meaning and default are written once, in the docstring of
    # prcl.losses.ContrastOptions, which the PRCL method builds from the keys of the same names (all
    # keys here but lambda's schedule, variance_scale and deterministic).
    temperature: Annotated[Positive, _must(f"be >= {MIN_TEMPERATURE:g} (smaller ones are one-hot in float32, and overflow)",
                                           lambda v: v >= MIN_TEMPERATURE)] = 100.0
    num_queries: Between(1, MAX_CONTRAST_PAIRS) = 256
    num_negatives: Between(1, MAX_CONTRAST_PAIRS) = 512
    # The schedule of lambda, the contrast's weight (prcl.schedules.contrast_weight), from here to max_epoch.
    lambda_schedule: Literal["ramp", "constant"] = "ramp"
    max_value: NonNegative = 1.0
    min_value: NonNegative = 0.0
    ramp_mult: Annotated[float, _must("be a finite number", math.isfinite)] = -5.0
    begin_epoch: NonNegative = 0.0
    max_epoch: float = 200.0
    kernel: Literal["auto", "compiled", "chunked"] = "auto"  # a contrast option again
    # Options beyond the released method (docs/method.md); the defaults keep it.
    variance_scale: Annotated[Positive, _must(f"be between {MIN_VARIANCE_SCALE:g} and {MAX_VARIANCE_SCALE:g}",
                                              lambda v: MIN_VARIANCE_SCALE <= v <= MAX_VARIANCE_SCALE)] = 1.0  # method: the probability head's variances are multiplied by this (1/D: see docs)
    prototype_variance: Literal["fused", "mean"] = "fused"
    deterministic: bool = False  # method: no probability head, every variance 0.5 x variance_scale (point contrast)
    global_prototypes: bool = False
    gdp_decay: Fraction = 0.0
    virtual_negatives: AtLeast(0) = 0
    vn_radius: NonNegative = 1.0
    vn_variance: Literal["global", "zero"] = "global"


class OptimConfig(_Section):
    lr: Annotated[Positive, AT_MOST_MAX_LR] = 3.2e-3
    # Learning rate of the probability head (name kept from the release; method prcl, not deterministic);
    # it decays with the same poly schedule as lr.
    uncer_lr: Annotated[NonNegative, AT_MOST_MAX_LR] = 5e-5
    momentum: Fraction = 0.9
    nesterov: bool = True
    weight_decay: Annotated[NonNegative, _must(f"be <= {MAX_WEIGHT_DECAY:g} (an SGD weight decay)",
                                               lambda v: v <= MAX_WEIGHT_DECAY)] = 5e-4
    poly_power: NonNegative = 0.9
    min_lr: Annotated[NonNegative, AT_MOST_MAX_LR] = 1e-6


class TrainConfig(_Section):
    # Where training stops (null: train.epochs x the epoch length); default: the release's VOC 662 run (200 x 84)
    iterations: Maybe[AtLeast(1)] = 16800
    epochs: Maybe[AtLeast(1)] = None  # set: the schedules span this many epochs (needs an epoch length)
    epoch_iterations: Maybe[AtLeast(1)] = None  # set: lr and lambda step once per epoch of this many
    epoch_images: Maybe[AtLeast(1)] = None  # set (the release: 2000): derive epoch_iterations as the release
    eval_every: AtLeast(0) = 1000  # 0: evaluate only at the end
    log_every: AtLeast(1) = 20
    # micro-batches per optimiser step (gradient accumulation): each draws its own labeled and unlabeled batch,
    # the global batch is data.batch_size x processes x accumulate; schedules, EMA and logs count optimiser steps
    accumulate: AtLeast(1) = 1
    checkpoint_every: AtLeast(0) = 1000  # 0: checkpoint only at the end
    seed: Seed = 0
    # may name config values, e.g. runs/voc_{data.num_labels}
    out_dir: Annotated[str, _must("name a folder, e.g. runs/prcl", lambda v: bool(v.strip()))] = "runs/prcl"
    device: Annotated[str, _must("be auto, cpu, cuda or cuda:N",
                                 lambda v: DEVICE_PATTERN.fullmatch(v) is not None)] = "auto"
    amp: bool = False  # mixed precision: bf16 where the device has it (CPUs, NVIDIA Ampere+), else fp16 + scaler
    compile: bool = False  # torch.compile the networks (the first steps are slower while it compiles)
    deterministic: bool = False  # bit-identical runs: deterministic kernels only (slower; see docs/usage.md)
    channels_last: bool = True  # NHWC memory layout for the networks and their inputs (faster convolutions)
    max_nonfinite_steps: AtLeast(1) = 10  # stop after this many non-finite losses in a row
    progress: bool = True
    tensorboard: bool = True  # TensorBoard scalars under <out_dir>/tensorboard when tensorboard is installed
    # at logged steps, where every unlabeled image has a mask: are the pseudo-labels right, and does the
    # uncertainty find the wrong ones (never trained on)
    pseudo_label_probe: bool = True


class EvalConfig(_Section):
    protocol: Literal["whole", "sliding", "center", "random-crop"] = "whole"
    flip: bool = False
    scales: Annotated[list[Scale], _must("list at least one scale, e.g. [1.0]", len)] = Field(
        default_factory=lambda: [1.0])
    window: Maybe[Between(32, MAX_SIDE)] = None  # sliding window size; None: data.crop_size
    stride: Maybe[Between(1, MAX_SIDE)] = None  # sliding window stride; None: two thirds of the window


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    prcl: PRCLConfig = Field(default_factory=PRCLConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


def _schema(cls: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """Dotted key -> annotation for every leaf and section (a section maps to its class)."""
    keys: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        keys[prefix + name] = kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            keys.update(_schema(kind, f"{prefix}{name}."))
    return keys


_SCHEMA = _schema(Config)
_KINDS = {"int_type": "int", "bool_type": "bool", "float_type": "float", "string_type": "str",
          "list_type": "a list of float such as [0.5, 1.5]"}
_LISTS = {"data.class_names": "a list of names such as [background, crack]",
          "data.class_colors": "a list of [R, G, B] such as [[0, 0, 0], [255, 0, 0]]"}


def _validate(tree: dict[str, Any], source: str) -> Config:
    """``Config`` from a nested dict; its first error as a UserError line naming the dotted key and ``source``."""
    try:
        return Config.model_validate(tree)
    except ValidationError as error:
        problem = error.errors()[0]
    kind, value, loc = problem["type"], problem["input"], problem["loc"]
    key = ".".join(str(p) for p in loc if isinstance(p, str)) + "".join(f"[{p}]" for p in loc if isinstance(p, int))
    if kind == "extra_forbidden":
        raise unknown_key(key, _SCHEMA, source)
    if kind == "must":
        raise UserError(f"{key} must {problem['msg']}, got {shown(problem['ctx']['value'])}{source}")
    if kind == "model_type":
        hint = f"give its keys (e.g. {key}.<name>=value)"
        raise UserError(f"config key '{key}' is a section: {hint}, got {shown(value)}{source}")
    if kind == "literal_error":
        listed = problem["ctx"]["expected"].replace("'", "").replace(" or ", ", ")
        raise UserError(f"config key '{key}' must be one of {listed}, got {shown(value)}{source}")
    expected = _LISTS[key] if kind == "list_type" and key in _LISTS else _KINDS.get(kind, problem["msg"])
    raise UserError(f"config key '{key}' expects {expected}, got {shown(value)}{source}")


def _build(tree: dict[str, Any], layers: list[tuple[dict[str, Any], str]], resolve: bool) -> Config:
    """Merge the (mapping, source) layers into ``tree`` in order, checking each; then validate and resolve."""
    cfg = _validate(tree, "")
    for content, source in layers:
        merge_layer(tree, content, source)
        cfg = _validate(tree, source)
    validate_config(cfg)
    return resolve_config(cfg) if resolve else cfg


def _override(override: str) -> tuple[dict[str, Any], str]:
    """``key.sub=value`` as a layer ({key: {sub: value}}, source); a text key keeps the text (out_dir=2024)."""
    key, sep, text = override.partition("=")
    key, source = key.strip(), f" (override {shown(override)})"
    if not sep or not key:
        raise UserError(f"override {shown(override)} must look like key.sub=value, e.g. train.iterations=1000")
    if key not in _SCHEMA:
        raise unknown_key(key, _SCHEMA, source)
    value = parse_value(text)
    if _SCHEMA[key] in (str, str | None) and value is not None and not isinstance(value, str):
        value = text.strip()  # a path such as 2024 or a name with a colon stays text
    for part in reversed(key.split(".")):
        value = {part: value}
    return value, source


def validate_config(cfg: Config) -> None:
    """Raise UserError naming the first impossible value: each key's type and range, then the checks across keys."""
    _validate(config_to_dict(cfg), "")
    data, prcl, train, evaluation = cfg.data, cfg.prcl, cfg.train, cfg.eval
    for ok, message in [
        (data.dataset == "demo" or data.root is not None,
         f"data.root is not set: data.dataset={data.dataset} needs data.root=PATH (the dataset's folder)"),
        (data.dataset != "folder" or data.num_classes is not None,
         "data.num_classes must be set when data.dataset=folder"),
        (prcl.min_value <= prcl.max_value,
         f"prcl.min_value ({prcl.min_value}) must not exceed prcl.max_value ({prcl.max_value})"),
        (math.isfinite(prcl.max_epoch) and prcl.max_epoch > prcl.begin_epoch,
         f"prcl.max_epoch ({prcl.max_epoch}) must be greater than prcl.begin_epoch ({prcl.begin_epoch})"),
        (not cfg.optim.nesterov or cfg.optim.momentum > 0,
         "optim.nesterov=true needs optim.momentum > 0 (set optim.nesterov=false for plain SGD)"),
        (train.epochs is None or train.epoch_iterations is not None or train.epoch_images is not None,
         "train.epochs needs an epoch length: set train.epoch_iterations=N, or train.epoch_images=2000 "
         "to derive it as the release does"),
        (train.iterations is not None or train.epochs is not None,
         "train.iterations is null and train.epochs is not set: give train.iterations=N (or train.epochs "
         "with an epoch length)"),
        (prcl.num_queries * prcl.num_negatives <= MAX_CONTRAST_PAIRS,
         f"prcl.num_queries x prcl.num_negatives ({prcl.num_queries} x {prcl.num_negatives}) must be at most "
         f"{MAX_CONTRAST_PAIRS}: the contrast scores that many anchor-key pairs per class (the release: 256 x 512)"),
        (evaluation.window is None or evaluation.stride is None or evaluation.stride <= evaluation.window,
         f"eval.stride ({evaluation.stride}) must not exceed eval.window ({evaluation.window}): "
         "pixels between windows would never be scored"),
    ]:
        if not ok:
            raise UserError(message)
    _check_classes(data)


def class_count(data: DataConfig) -> int | None:
    """The number of classes: ``data.num_classes``, or the dataset's own when it is null (None for a folder)."""
    if data.num_classes is not None:
        return data.num_classes
    return data.demo.num_classes if data.dataset == "demo" else DATASET_NUM_CLASSES.get(data.dataset)


def _check_classes(data: DataConfig) -> None:
    """data.class_names and data.class_colors: one entry per class, names distinct and not empty."""
    count = class_count(data)
    counted_by = ("data.num_classes" if data.num_classes is not None else
                  "data.demo.num_classes" if data.dataset == "demo" else f"data.dataset={data.dataset}")
    for key, given, what in (("data.class_names", data.class_names, "names"),
                             ("data.class_colors", data.class_colors, "colours")):
        if given is not None and count is not None and len(given) != count:
            raise UserError(f"{key} lists {len(given)} {what} for {count} classes ({counted_by}): "
                            f"give one per class, in class index order")
    names = data.class_names or []
    for index, name in enumerate(names):
        if not name.strip():
            raise UserError(f"data.class_names[{index}] is empty: give every class a name")
    check_unique_names(names, "data.class_names")


def launch_world_size() -> int:
    """Processes of the run being launched: torchrun's WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def resolve_config(cfg: Config, world_size: int | None = None) -> Config:
    """A copy with the derived values (those left null) filled in, see the module docstring; ``world_size``
    (default: torchrun's WORLD_SIZE, else 1) gives the global batch (``data.batch_size`` x processes x
    ``train.accumulate``) from which ``train.epoch_images`` derives."""
    world = launch_world_size() if world_size is None else world_size
    resolved = cfg.model_copy(deep=True)
    data, train, evaluation = resolved.data, resolved.train, resolved.eval
    data.num_classes = class_count(data)
    data.unlabeled_batch_size = data.unlabeled_batch_size or data.batch_size
    evaluation.window = evaluation.window or data.crop_size
    evaluation.stride = evaluation.stride or max(1, evaluation.window * 2 // 3)
    resolve_schedule(train, data.num_labels, data.batch_size * world * train.accumulate)
    train.out_dir = _format_out_dir(cfg.train.out_dir, {name: getattr(resolved, name) for name in Config.model_fields})
    return resolved


def _format_out_dir(text: str, sections: dict[str, Any]) -> str:
    """``train.out_dir`` with each ``{section.key}`` replaced by its value; UserError for a name that is not a
    key (a whole section included: its text is the section's every value) or a path the file system refuses."""
    fix = "write keys as {section.key}, e.g. runs/voc_{data.num_labels}"
    try:  # runs/voc_{data.num_labels} -> runs/voc_662
        names = [field for _, field, _, _ in string.Formatter().parse(text) if field is not None]
        for name in names:
            try:
                if name in sections:
                    raise KeyError(name)
                ("{" + name + "}").format(**sections)
            except (KeyError, AttributeError, IndexError, ValueError, TypeError):
                kind = "a whole section, not a key" if name in sections else "not a config key"
                raise UserError(f"train.out_dir {shown(text)} names {{{cut(name, 40)}}} in braces, which is {kind}; "
                                f"{fix}") from None
        formatted = text.format(**sections)
    except (KeyError, AttributeError, IndexError, ValueError, TypeError) as error:
        raise UserError(f"train.out_dir {shown(text)} cannot be filled in ({cut(str(error), 60)}); {fix}") from None
    _check_path_length(formatted, "train.out_dir")
    return formatted


def _check_path_length(path: str, key: str) -> None:
    """UserError when ``path`` holds a name longer than NAME_MAX bytes or is longer than PATH_MAX bytes."""
    encoded = os.fsencode(path)
    longest = max(encoded.split(b"/"), key=len)
    if len(longest) > NAME_MAX:
        raise UserError(f"{key} holds a name of {len(longest)} bytes ({shown(os.fsdecode(longest), 40)}); file "
                        f"systems allow {NAME_MAX}: shorten it")
    if len(encoded) > PATH_MAX:
        raise UserError(f"{key} is {len(encoded)} bytes long ({shown(path, 40)}); paths may have {PATH_MAX}: "
                        "shorten it")


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (sections -> keys -> values), as written to YAML."""
    return cfg.model_dump()


def apply_overrides(cfg: Config, overrides: list[str] | tuple[str, ...], *, resolve: bool = True) -> Config:
    """A new Config with ``key.sub=value`` overrides applied, validated (and resolved)."""
    return _build(config_to_dict(cfg), [_override(o) for o in overrides], resolve)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *,
                resolve: bool = True) -> Config:
    """Defaults <- YAML file (with its ``_base_`` files; None: none) <- overrides, validated and resolved. Raises
    UserError for a missing or malformed file, an unknown key, a wrong type or an impossible value."""
    files = read_layers(Path(path)) if path is not None else []
    return _build(config_to_dict(Config()), files + [_override(o) for o in overrides], resolve)


def config_from_dict(tree: dict[str, Any], source: str = "") -> Config:
    """A validated, resolved Config from a nested plain dict (e.g. one stored in a checkpoint); keys missing
    from ``tree`` keep their defaults; ``source`` names where the dict came from in error messages."""
    return _build(config_to_dict(Config()), [(tree, f" in {source}" if source else "")], resolve=True)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML (lists inline) atomically (``prcl.io.atomic_write``)."""
    with atomic_write(path, "w") as stream:
        write_yaml(config_to_dict(cfg), stream)


# Resuming a run with another config: breaking keys refuse, free keys pass silently, others need --resume-force.
RESUME_BREAKING = ("method.name", "model.encoder", "model.output_stride", "data.dataset", "data.num_classes",
                   "data.num_labels", "data.split_seed", "data.splits", "prcl.deterministic", "prcl.global_prototypes")
RESUME_FREE = ("train.iterations", "train.progress", "train.out_dir", "train.device", "train.log_every", "train.eval_every",
               "train.checkpoint_every", "train.channels_last", "train.compile", "train.tensorboard", "data.num_workers",
               "data.class_names", "data.class_colors",
               "model.weights")  # the encoder's initial weights: a resumed run takes them from its checkpoint


def resume_conflicts(stored: Config, current: Config) -> tuple[list[str], list[str]]:
    """(breaking, other): the dotted keys whose values differ between the config stored in a run and ``current``
    (each a prcl.yaml_files.ChangedKey, a str whose ``change`` reads "old -> new")."""
    changed = [k for k in changed_keys(config_to_dict(stored), config_to_dict(current)) if k not in RESUME_FREE]
    return [k for k in changed if k in RESUME_BREAKING], [k for k in changed if k not in RESUME_BREAKING]


def resume_refusal(breaking: list[str], other: list[str], force: bool, run: str | Path = "the run") -> str | None:
    """The one line refusing to resume ``run`` with the changed keys of ``resume_conflicts``, or None to go on."""
    if not breaking and (force or not other):
        return None
    listed = ", ".join(key + (f" changed ({key.change})" if getattr(key, "change", "") else " changed")
                       for key in breaking or other)
    fix = "start a new run in a new train.out_dir" if breaking else "pass --resume-force to go on with the new values"
    return f"cannot resume {run}: {listed}; {fix}"
