"""Typed configuration: dataclass schema, YAML files, ``key.sub=value`` overrides, validation.

A configuration is built in this order, each step overriding the previous one:

1. the defaults below (the reference's values; the demo dataset by default);
2. a YAML file, which may hold only some keys and may name a ``_base_: other.yaml`` (path relative
   to the file; a list of files is merged in order) whose keys it overrides;
3. ``key.sub=value`` overrides from the command line, the value parsed as a YAML scalar or list
   (``train.amp=true``, ``data.scale_range=[0.75,1.25]``, ``optim.lr=1e-3``, ``data.root=null``).

For a key that may be null, ``null``, ``~``, ``None`` and ``none`` all mean null.

Then every value is checked (type, choice, range) and the derived values are filled in
(``resolve_config``): ``data.num_classes`` from the dataset, ``data.unlabeled_batch_size`` from
``data.batch_size``, ``eval.window`` from ``data.crop_size`` and ``eval.stride`` from the window,
the schedule (below), and ``{section.key}`` names in ``train.out_dir``.
A saved ``config.yaml`` therefore holds the resolved values and loads back to an equal ``Config``.
Every mistake raises ``prcl.errors.UserError`` with one line naming the key or file.

Schedules (``prcl.engine.schedules``):

- continuous: without an epoch length, lr and lambda follow ``step / train.iterations``; the
  lambda ramp treats the run as ``prcl.max_epoch`` epochs.
- per epoch, as the reference: ``train.epoch_iterations`` gives the epoch length, or
  ``train.epoch_images`` (the reference's 2000) derives it from ``data.num_labels`` and the
  global labeled batch (``data.batch_size`` x the number of processes); lr and lambda change once
  per epoch; the lr schedule spans ``train.epochs`` epochs and ``train.iterations``, when null,
  is ``epochs x epoch_iterations``. A smaller ``train.iterations`` stops the run early on the same
  schedule (a smoke test of a paper recipe); a shorter schedule is fewer ``train.epochs``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from prcl.errors import UserError

DATASET_NUM_CLASSES = {"voc": 21, "cityscapes": 19}
BASE_KEY = "_base_"


# --------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------


@dataclass
class DemoConfig:
    """The embedded demo dataset's generator (all tunable; small so that a CPU run is quick)."""

    image_size: int = 96
    num_classes: int = 6
    num_train: int = 600
    num_valid: int = 100
    num_test: int = 50
    seed: int = 0


@dataclass
class DataConfig:
    dataset: Literal["demo", "voc", "cityscapes", "folder"] = "demo"
    root: str | None = None
    splits: str | None = None  # folder holding <num_labels>/<split_seed>/*_filename.txt
    num_labels: int = 662
    split_seed: int = 3407
    num_classes: int | None = None  # None: voc 21, cityscapes 19, demo demo.num_classes
    crop_size: int = 321
    batch_size: int = 2  # labeled images per process
    unlabeled_batch_size: int | None = None  # None: batch_size
    scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    num_workers: int = 2
    demo: DemoConfig = field(default_factory=DemoConfig)


@dataclass
class ModelConfig:
    encoder: str = "resnet101"
    output_stride: Literal[8, 16] = 16
    weights: str | None = None  # a checkpoint path, or "imagenet" where the weights ship in a package


@dataclass
class MethodConfig:
    name: Literal["supervised", "mean_teacher", "prcl"] = "prcl"
    ema_alpha: float = 0.99
    un_threshold: float = 0.97
    weak_threshold: float = 0.7
    strong_threshold: float = 0.8
    mix: Literal["classmix", "cutmix", "cutout", "none"] = "classmix"
    strong_scale_range: list[float] = field(default_factory=lambda: [0.5, 1.5])
    # separate: the student sees the labeled batch, then the strong view, in two forward passes (the
    # reference; BatchNorm statistics per batch); joint: one pass over both concatenated.
    student_passes: Literal["separate", "joint"] = "separate"


@dataclass
class PRCLConfig:
    temperature: float = 100.0
    num_queries: int = 256
    num_negatives: int = 512
    lambda_schedule: Literal["ramp", "constant"] = "ramp"
    max_value: float = 1.0
    min_value: float = 0.0
    ramp_mult: float = -5.0
    begin_epoch: float = 0.0
    max_epoch: float = 200.0
    kernel: Literal["auto", "compiled", "chunked"] = "auto"
    # Options beyond the released method (docs/method.md); the defaults keep it.
    variance_scale: float = 1.0  # the probability head's variances are multiplied by this (1/D: see docs)
    prototype_variance: Literal["fused", "mean"] = "fused"  # mean: does not shrink with the pixel count
    deterministic: bool = False  # no probability head: every variance 0.5 x variance_scale (point contrast)
    global_prototypes: bool = False  # GDP: per-class Gaussians carried over training
    gdp_decay: float = 0.0  # GDP: forgetting of the accumulated statistics per step (0: accumulate)
    virtual_negatives: int = 0  # VN: samples per other class and anchor from its prototype Gaussian
    vn_radius: float = 1.0
    vn_variance: Literal["global", "zero"] = "global"


@dataclass
class OptimConfig:
    lr: float = 3.2e-3
    uncer_lr: float = 5e-5
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    min_lr: float = 1e-6


@dataclass
class TrainConfig:
    # Where training stops. null: at the end of the schedule (train.epochs x the epoch length).
    # The default is the reference's VOC 662 run on 8 GPUs (200 epochs x 84 iterations).
    iterations: int | None = 16800
    epochs: int | None = None  # set: the schedules span this many epochs (needs an epoch length)
    epoch_iterations: int | None = None  # set: lr and lambda step once per epoch of this many
    epoch_images: int | None = None  # set (the reference: 2000): derive epoch_iterations as the reference
    eval_every: int = 1000  # 0: evaluate only at the end
    log_every: int = 20
    checkpoint_every: int = 1000  # 0: checkpoint only at the end
    seed: int = 0
    out_dir: str = "runs/prcl"  # may name config values, e.g. runs/voc_{data.num_labels}
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = False
    channels_last: bool = True  # NHWC memory layout for the networks and their inputs (faster convolutions)
    max_nonfinite_steps: int = 10  # stop after this many non-finite losses in a row
    progress: bool = True


@dataclass
class EvalConfig:
    protocol: Literal["whole", "sliding", "center", "random-crop"] = "whole"
    flip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    window: int | None = None  # sliding window size; None: data.crop_size
    stride: int | None = None  # sliding window stride; None: two thirds of the window


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    prcl: PRCLConfig = field(default_factory=PRCLConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------------------------
# schema introspection
# --------------------------------------------------------------------------------------------


def _schema(cls: type, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> type annotation for every leaf and section (sections map to their class)."""
    keys: dict[str, Any] = {}
    for name, annotation in typing.get_type_hints(cls).items():
        key = f"{prefix}{name}"
        keys[key] = annotation
        if dataclasses.is_dataclass(annotation):
            keys.update(_schema(annotation, key + "."))
    return keys


_SCHEMA = _schema(Config)


def _is_section(key: str) -> bool:
    return dataclasses.is_dataclass(_SCHEMA[key])


def _unknown_key(key: str, source: str) -> UserError:
    """The error for a key not in the schema, suggesting the closest valid key (difflib)."""
    close = difflib.get_close_matches(key, list(_SCHEMA), n=1, cutoff=0.6)
    parent, _, leaf = key.rpartition(".")
    siblings = [k for k in _SCHEMA if k.rpartition(".")[0] == parent]
    if not close:  # a misspelt last part inside a valid section, e.g. 'prcl.tmp'
        names = {k.rpartition(".")[2]: k for k in siblings}
        close = [names[n] for n in difflib.get_close_matches(leaf, list(names), n=1, cutoff=0.5)]
    if close:
        hint = f"; did you mean '{close[0]}'?"
    elif siblings:
        hint = "; valid keys here: " + ", ".join(siblings)
    else:
        hint = ""
    return UserError(f"unknown config key '{key}'{source}{hint}")


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "one of " + ", ".join(str(a) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Check ``value`` against ``annotation`` and return it in canonical form (int -> float, ...)."""
    origin = typing.get_origin(annotation)

    def wrong_type() -> UserError:
        return UserError(f"config key '{key}' expects {_type_name(annotation)}, got {value!r}{source}")

    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value in ("None", "none")):
            return None
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _coerce(key, value, inner, source)
    if origin is Literal:
        choices = typing.get_args(annotation)
        for choice in choices:
            if value == choice and type(value) is type(choice):
                return choice
        listed = ", ".join(str(c) for c in choices)
        raise UserError(f"config key '{key}' must be one of {listed}, got {value!r}{source}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            example = "such as [0.5, 1.5]"
            raise UserError(f"config key '{key}' expects {_type_name(annotation)} {example}, got {value!r}{source}")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(f"{key}[{i}]", item, item_type, source) for i, item in enumerate(value)]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise wrong_type()
    if annotation is int:
        if isinstance(value, bool):
            raise wrong_type()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():  # e.g. iterations=1e4
            return int(value)
        raise wrong_type()
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong_type()
        return float(value)
    if annotation is str:
        if isinstance(value, str):
            return value
        raise wrong_type()
    raise TypeError(f"unsupported annotation {annotation!r} for {key}")  # a schema bug, not a user error


# --------------------------------------------------------------------------------------------
# YAML
# --------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads 1e-3 and 5e-4 as floats (YAML 1.1 wants a dot and a signed exponent)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing sections as blocks and lists inline: ``scale_range: [0.5, 1.5]``."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _represent_list)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _read_yaml(path: Path) -> dict[str, Any]:
    """The mapping in one YAML file (empty file: {})."""
    if not path.exists():
        raise UserError(f"config file not found: {path} (check the path, e.g. configs/demo.yaml)")
    if path.is_dir():
        raise UserError(f"config path is a folder, not a YAML file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read config file {path}: {_one_line(error)}") from None
    try:
        content = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
        if context and context_mark is not None and context_mark is not mark:
            problem = f"{problem} ({context} started at line {context_mark.line + 1})"
        raise UserError(f"malformed YAML in {path}{where}: {_one_line(problem)}") from None
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise UserError(
            f"config file {path} must hold a mapping of sections (data:, model:, ...), "
            f"got {type(content).__name__}"
        )
    return content


def _yaml_chain(path: Path, stack: tuple[Path, ...] = ()) -> list[tuple[dict[str, Any], Path]]:
    """The file and its ``_base_`` files, bases first, each as (mapping without _base_, path)."""
    resolved = path.resolve()
    if resolved in stack:
        cycle = " -> ".join(str(p) for p in (*stack, resolved))
        raise UserError(f"config files name each other as _base_ in a cycle: {cycle}")
    content = _read_yaml(path)
    bases = content.pop(BASE_KEY, None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not (isinstance(bases, list) and all(isinstance(b, str) for b in bases)):
        raise UserError(f"{BASE_KEY} in {path} must be a file name or a list of file names, got {bases!r}")
    chain: list[tuple[dict[str, Any], Path]] = []
    for base in bases:
        chain.extend(_yaml_chain(path.parent / base, (*stack, resolved)))
    chain.append((content, path))
    return chain


# --------------------------------------------------------------------------------------------
# merging into a nested dict
# --------------------------------------------------------------------------------------------


def _set(tree: dict[str, Any], key: str, value: Any, source: str) -> None:
    """Set dotted ``key`` in the nested dict ``tree`` after checking it (a mapping merges into a section)."""
    if key not in _SCHEMA:
        raise _unknown_key(key, source)
    if _is_section(key):
        if value is None:  # a section header with every key commented out
            return
        if not isinstance(value, dict):
            hint = f"give its keys (e.g. {key}.<name>=value)"
            raise UserError(f"config key '{key}' is a section: {hint}, got {value!r}{source}")
        for name, item in value.items():
            _set(tree, f"{key}.{name}", item, source)
        return
    *parents, leaf = key.split(".")
    node = tree
    for parent in parents:
        node = node[parent]
    node[leaf] = _coerce(key, value, _SCHEMA[key], source)


def _merge_mapping(tree: dict[str, Any], content: dict[str, Any], source: str) -> None:
    for name, value in content.items():
        if not isinstance(name, str):
            raise UserError(f"config key {name!r}{source} must be a name such as 'data'")
        _set(tree, name, value, source)


def _parse_override(override: str) -> tuple[str, Any]:
    key, sep, text = override.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"override {override!r} must look like key.sub=value, e.g. train.iterations=1000")
    if key not in _SCHEMA:
        raise _unknown_key(key, f" (override {override!r})")
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError:
        value = text
    annotation = _SCHEMA[key]
    text_field = annotation is str or (
        typing.get_origin(annotation) in (typing.Union, types.UnionType) and str in typing.get_args(annotation)
    )
    if text_field and value is not None and not isinstance(value, str):
        value = text.strip()  # a path such as 2024 or a name with a colon stays text
    return key, value


def _from_dict(cls: type, tree: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for item in dataclasses.fields(cls):
        value = tree[item.name]
        annotation = hints[item.name]
        values[item.name] = _from_dict(annotation, value) if dataclasses.is_dataclass(annotation) else value
    return cls(**values)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Nested plain dict (sections -> keys -> values), as written to YAML."""
    return dataclasses.asdict(cfg)


def _build(tree: dict[str, Any], resolve: bool) -> Config:
    cfg = _from_dict(Config, tree)
    validate_config(cfg)
    return resolve_config(cfg) if resolve else cfg


# --------------------------------------------------------------------------------------------
# validation and derived values
# --------------------------------------------------------------------------------------------


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def _positive(key: str, value: float) -> None:
    _check(math.isfinite(value) and value > 0, f"{key} must be a positive number, got {value}")


def _non_negative(key: str, value: float) -> None:
    _check(math.isfinite(value) and value >= 0, f"{key} must be >= 0, got {value}")


def _at_least(key: str, value: int | None, low: int) -> None:
    if value is not None:
        _check(value >= low, f"{key} must be >= {low}, got {value}")


def _unit(key: str, value: float) -> None:
    _check(0.0 <= value <= 1.0, f"{key} must be in [0, 1], got {value}")


def _scale_pair(key: str, value: list[float]) -> None:
    _check(
        len(value) == 2 and 0 < value[0] <= value[1] and math.isfinite(value[1]),
        f"{key} must be [low, high] with 0 < low <= high, got {value}",
    )


def validate_config(cfg: Config) -> None:
    """Raise UserError naming the first impossible value (types are checked while loading)."""
    data = cfg.data
    _at_least("data.num_labels", data.num_labels, 1)
    _at_least("data.num_classes", data.num_classes, 2)
    _at_least("data.crop_size", data.crop_size, 32)
    # BatchNorm (the ASPP pooling branch sees one value per channel and image) needs 2 images.
    _at_least("data.batch_size", data.batch_size, 2)
    _at_least("data.unlabeled_batch_size", data.unlabeled_batch_size, 2)
    _at_least("data.num_workers", data.num_workers, 0)
    _scale_pair("data.scale_range", data.scale_range)
    if data.dataset != "demo":
        _check(
            data.root is not None,
            f"data.root is not set: data.dataset={data.dataset} needs data.root=PATH (the dataset's folder)",
        )
    if data.dataset == "folder":
        _check(data.num_classes is not None, "data.num_classes must be set when data.dataset=folder")
    demo = data.demo
    _at_least("data.demo.image_size", demo.image_size, 32)
    _at_least("data.demo.num_classes", demo.num_classes, 2)
    _at_least("data.demo.num_train", demo.num_train, 1)
    _at_least("data.demo.num_valid", demo.num_valid, 1)
    _at_least("data.demo.num_test", demo.num_test, 0)

    _check(bool(cfg.model.encoder.strip()), "model.encoder must name an encoder, e.g. resnet101")

    method = cfg.method
    _unit("method.ema_alpha", method.ema_alpha)
    _unit("method.un_threshold", method.un_threshold)
    _unit("method.weak_threshold", method.weak_threshold)
    _unit("method.strong_threshold", method.strong_threshold)
    _scale_pair("method.strong_scale_range", method.strong_scale_range)

    prcl = cfg.prcl
    _positive("prcl.temperature", prcl.temperature)
    _at_least("prcl.num_queries", prcl.num_queries, 1)
    _at_least("prcl.num_negatives", prcl.num_negatives, 1)
    _non_negative("prcl.max_value", prcl.max_value)
    _non_negative("prcl.min_value", prcl.min_value)
    _check(
        prcl.min_value <= prcl.max_value,
        f"prcl.min_value ({prcl.min_value}) must not exceed prcl.max_value ({prcl.max_value})",
    )
    _check(math.isfinite(prcl.ramp_mult), f"prcl.ramp_mult must be a finite number, got {prcl.ramp_mult}")
    _positive("prcl.variance_scale", prcl.variance_scale)
    _check(0.0 <= prcl.gdp_decay < 1.0, f"prcl.gdp_decay must be in [0, 1), got {prcl.gdp_decay}")
    _at_least("prcl.virtual_negatives", prcl.virtual_negatives, 0)
    _non_negative("prcl.vn_radius", prcl.vn_radius)
    _non_negative("prcl.begin_epoch", prcl.begin_epoch)
    _check(
        math.isfinite(prcl.max_epoch) and prcl.max_epoch > prcl.begin_epoch,
        f"prcl.max_epoch ({prcl.max_epoch}) must be greater than prcl.begin_epoch ({prcl.begin_epoch})",
    )

    optim = cfg.optim
    _positive("optim.lr", optim.lr)
    _non_negative("optim.uncer_lr", optim.uncer_lr)
    _check(0.0 <= optim.momentum < 1.0, f"optim.momentum must be in [0, 1), got {optim.momentum}")
    _check(
        not optim.nesterov or optim.momentum > 0,
        "optim.nesterov=true needs optim.momentum > 0 (set optim.nesterov=false for plain SGD)",
    )
    _non_negative("optim.weight_decay", optim.weight_decay)
    _non_negative("optim.poly_power", optim.poly_power)
    _non_negative("optim.min_lr", optim.min_lr)

    train = cfg.train
    _at_least("train.iterations", train.iterations, 1)
    _at_least("train.epochs", train.epochs, 1)
    _at_least("train.epoch_iterations", train.epoch_iterations, 1)
    _at_least("train.epoch_images", train.epoch_images, 1)
    _check(
        train.epochs is None or train.epoch_iterations is not None or train.epoch_images is not None,
        "train.epochs needs an epoch length: set train.epoch_iterations=N, or train.epoch_images=2000 "
        "to derive it as the reference does",
    )
    _check(
        train.iterations is not None or train.epochs is not None,
        "train.iterations is null and train.epochs is not set: give train.iterations=N (or train.epochs "
        "with an epoch length)",
    )
    _at_least("train.eval_every", train.eval_every, 0)
    _at_least("train.log_every", train.log_every, 1)
    _at_least("train.checkpoint_every", train.checkpoint_every, 0)
    _at_least("train.seed", train.seed, 0)
    _at_least("train.max_nonfinite_steps", train.max_nonfinite_steps, 1)
    _check(bool(train.out_dir.strip()), "train.out_dir must name a folder, e.g. runs/prcl")
    _check(
        re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", train.device) is not None,
        f"train.device must be auto, cpu, cuda or cuda:N, got {train.device!r}",
    )

    evaluation = cfg.eval
    _check(len(evaluation.scales) > 0, "eval.scales must list at least one scale, e.g. [1.0]")
    for scale in evaluation.scales:
        _positive("eval.scales", scale)
    _at_least("eval.window", evaluation.window, 32)
    _at_least("eval.stride", evaluation.stride, 1)
    if evaluation.window is not None and evaluation.stride is not None:
        _check(
            evaluation.stride <= evaluation.window,
            f"eval.stride ({evaluation.stride}) must not exceed eval.window ({evaluation.window}): "
            "pixels between windows would never be scored",
        )


def launch_world_size() -> int:
    """Processes of the run being launched: torchrun's WORLD_SIZE, else 1."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes") from None


def _resolve_schedule(train: TrainConfig, data: DataConfig, world_size: int) -> TrainConfig:
    """Fill in ``epoch_iterations`` (from ``epoch_images``) and ``iterations`` (from ``epochs``)."""
    from prcl.engine.schedules import reference_epoch_iterations

    epoch_iterations = train.epoch_iterations
    if epoch_iterations is None and train.epoch_images is not None:
        epoch_iterations = reference_epoch_iterations(data.num_labels, data.batch_size * world_size,
                                                      train.epoch_images)
    iterations = train.iterations
    if train.epochs is not None:
        length = train.epochs * epoch_iterations
        if iterations is None:
            iterations = length
        _check(
            iterations <= length,
            f"train.iterations ({iterations}) is past the end of the schedule, train.epochs x "
            f"{epoch_iterations} iterations = {length}; set train.iterations=null to run the whole "
            "schedule, or raise train.epochs",
        )
    return dataclasses.replace(train, epoch_iterations=epoch_iterations, iterations=iterations)


def _format_out_dir(cfg: Config) -> str:
    """``train.out_dir`` with config values filled in: ``runs/voc_{data.num_labels}`` -> ``runs/voc_662``."""
    sections = {item.name: getattr(cfg, item.name) for item in dataclasses.fields(cfg)}
    try:
        return cfg.train.out_dir.format(**sections)
    except (KeyError, AttributeError, IndexError, ValueError) as error:
        raise UserError(
            f"train.out_dir {cfg.train.out_dir!r} names {error} in braces, which is not a config key; "
            "write keys as {section.key}, e.g. runs/voc_{data.num_labels}"
        ) from None


def resolve_config(cfg: Config, world_size: int | None = None) -> Config:
    """A copy with the derived values filled in (those left as null): see the module docstring.

    ``world_size`` (default: torchrun's WORLD_SIZE, else 1) gives the global batch from which
    ``train.epoch_images`` derives the epoch length.
    """
    data = cfg.data
    num_classes = data.num_classes
    if num_classes is None:
        num_classes = data.demo.num_classes if data.dataset == "demo" else DATASET_NUM_CLASSES.get(data.dataset)
    unlabeled = data.unlabeled_batch_size if data.unlabeled_batch_size is not None else data.batch_size
    window = cfg.eval.window if cfg.eval.window is not None else data.crop_size
    stride = cfg.eval.stride if cfg.eval.stride is not None else max(1, window * 2 // 3)
    world = launch_world_size() if world_size is None else world_size
    resolved = dataclasses.replace(
        cfg,
        data=dataclasses.replace(data, num_classes=num_classes, unlabeled_batch_size=unlabeled),
        train=_resolve_schedule(cfg.train, data, world),
        eval=dataclasses.replace(cfg.eval, window=window, stride=stride),
    )
    resolved.train.out_dir = _format_out_dir(resolved)
    return resolved


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def apply_overrides(
    cfg: Config, overrides: list[str] | tuple[str, ...], *, resolve: bool = True
) -> Config:
    """A new Config with ``key.sub=value`` overrides applied, validated (and resolved)."""
    tree = config_to_dict(cfg)
    for override in overrides:
        key, value = _parse_override(override)
        _set(tree, key, value, f" (override {override!r})")
    return _build(tree, resolve)


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (), *, resolve: bool = True
) -> Config:
    """Defaults <- YAML file (with its ``_base_`` files) <- overrides; validated and resolved.

    ``path`` None gives the defaults. Raises UserError for a missing or malformed file, an unknown
    key, a wrong type or an impossible value.
    """
    tree = config_to_dict(Config())
    if path is not None:
        for content, file in _yaml_chain(Path(path)):
            _merge_mapping(tree, content, f" in {file}")
    for override in overrides:
        key, value = _parse_override(override)
        _set(tree, key, value, f" (override {override!r})")
    return _build(tree, resolve)


def config_from_dict(tree: dict[str, Any], source: str = "") -> Config:
    """A validated, resolved Config from a nested plain dict (e.g. one stored in a checkpoint).

    Keys missing from ``tree`` keep their defaults; ``source`` names where the dict came from in
    error messages.
    """
    full = config_to_dict(Config())
    _merge_mapping(full, tree, f" in {source}" if source else "")
    return _build(full, resolve=True)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write ``cfg`` as YAML atomically (temporary file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
