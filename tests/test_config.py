"""Configuration: defaults, YAML + overrides, _base_ presets, error messages, round trip."""

import dataclasses
from pathlib import Path

import pytest

from prcl.config import Config, apply_overrides, config_to_dict, load_config, resolve_config, save_config
from prcl.errors import UserError


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_are_the_reference_values():
    cfg = Config()
    assert cfg.data.dataset == "demo"
    assert (cfg.data.num_labels, cfg.data.split_seed, cfg.data.crop_size, cfg.data.batch_size) == (662, 3407, 321, 2)
    assert cfg.data.scale_range == [0.5, 1.5]
    assert (cfg.model.encoder, cfg.model.output_stride) == ("resnet101", 16)
    method = cfg.method
    assert (method.name, method.ema_alpha, method.mix) == ("prcl", 0.99, "classmix")
    assert (method.un_threshold, method.weak_threshold, method.strong_threshold) == (0.97, 0.7, 0.8)
    prcl = cfg.prcl
    assert (prcl.temperature, prcl.num_queries, prcl.num_negatives) == (100.0, 256, 512)
    assert (prcl.max_value, prcl.min_value, prcl.ramp_mult, prcl.begin_epoch, prcl.max_epoch) == (1.0, 0.0, -5.0, 0, 200)
    optim = cfg.optim
    assert (optim.lr, optim.uncer_lr, optim.momentum, optim.nesterov) == (3.2e-3, 5e-5, 0.9, True)
    assert (optim.weight_decay, optim.poly_power, optim.min_lr) == (5e-4, 0.9, 1e-6)
    assert (cfg.train.amp, cfg.train.max_nonfinite_steps, cfg.eval.protocol, cfg.eval.scales) == (False, 10, "whole", [1.0])


def test_load_without_file_gives_resolved_defaults():
    cfg = load_config(None, [])
    assert cfg.data.num_classes == cfg.data.demo.num_classes
    assert cfg.data.unlabeled_batch_size == cfg.data.batch_size
    assert cfg.eval.window == cfg.data.crop_size and 0 < cfg.eval.stride <= cfg.eval.window
    assert cfg == resolve_config(Config())
    voc = load_config(None, ["data.dataset=voc", "data.root=/data/voc", "data.crop_size=513"])
    assert (voc.data.num_classes, voc.eval.window) == (21, 513)
    assert load_config(None, ["data.dataset=cityscapes", "data.root=x"]).data.num_classes == 19


def test_partial_yaml_and_override_precedence(tmp_path):
    path = write(
        tmp_path / "run.yaml",
        "data:\n  crop_size: 65\n  batch_size: 4\noptim:\n  lr: 1e-3\ntrain:\n  iterations: 50\n",
    )
    cfg = load_config(path, ["train.iterations=7", "prcl.temperature=0.5"])
    assert cfg.data.crop_size == 65 and cfg.data.batch_size == 4
    assert cfg.optim.lr == pytest.approx(1e-3)  # 1e-3 is a float, not PyYAML's string
    assert cfg.train.iterations == 7  # the override wins over the file
    assert cfg.prcl.temperature == 0.5
    assert cfg.data.unlabeled_batch_size == 4  # derived from the file's batch size
    assert cfg.method.weak_threshold == 0.7  # untouched keys keep their defaults


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    with pytest.raises(UserError, match=r"'prcl\.temprature'.*did you mean 'prcl\.temperature'"):
        load_config(None, ["prcl.temprature=0.5"])
    path = write(tmp_path / "typo.yaml", "optim:\n  weight_decy: 1.0e-4\n")
    with pytest.raises(UserError) as error:
        load_config(path, [])
    message = str(error.value)
    assert "optim.weight_decy" in message and "optim.weight_decay" in message and "typo.yaml" in message
    assert "\n" not in message


def test_wrong_type_names_key_type_and_value(tmp_path):
    with pytest.raises(UserError, match=r"'data\.crop_size' expects int, got 'big'"):
        load_config(None, ["data.crop_size=big"])
    with pytest.raises(UserError, match=r"'train\.amp' expects bool"):
        load_config(write(tmp_path / "t.yaml", "train:\n  amp: 3\n"), [])
    with pytest.raises(UserError, match=r"'data\.scale_range' expects a list of float"):
        load_config(None, ["data.scale_range=wide"])
    with pytest.raises(UserError, match=r"'data' is a section"):
        load_config(None, ["data=3"])
    with pytest.raises(UserError, match="key.sub=value"):
        load_config(None, ["train.iterations"])


def test_bad_choice_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"'method\.mix' must be one of classmix, cutmix, cutout, none, got 'mixup'"):
        load_config(None, ["method.mix=mixup"])
    with pytest.raises(UserError, match=r"'model\.output_stride' must be one of 8, 16"):
        load_config(None, ["model.output_stride=32"])
    with pytest.raises(UserError, match="auto, cpu, cuda or cuda:N"):
        load_config(None, ["train.device=gpu"])
    assert load_config(None, ["train.device=cuda:1"]).train.device == "cuda:1"


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("method.weak_threshold=1.2", "method.weak_threshold must be in [0, 1]"),
        ("method.un_threshold=-0.1", "method.un_threshold must be in [0, 1]"),
        ("optim.lr=-0.01", "optim.lr must be a positive number"),
        ("data.crop_size=16", "data.crop_size must be >= 32"),
        ("train.iterations=0", "train.iterations must be >= 1"),
        ("data.scale_range=[1.5,0.5]", "data.scale_range must be [low, high]"),
        ("prcl.temperature=0", "prcl.temperature must be a positive number"),
        ("data.dataset=voc", "data.root is not set"),
    ],
)
def test_impossible_values(override, fragment):
    with pytest.raises(UserError) as error:
        load_config(None, [override])
    assert fragment in str(error.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="config file not found: .*nope.yaml"):
        load_config(tmp_path / "nope.yaml", [])
    bad = write(tmp_path / "bad.yaml", "data:\n  crop_size: 65\n  batch_size: [1, 2\ntrain:\n  amp: true\n")
    with pytest.raises(UserError) as error:
        load_config(bad, [])
    message = str(error.value)
    assert message.startswith("malformed YAML in") and "bad.yaml" in message and "line" in message
    assert "\n" not in message
    with pytest.raises(UserError, match="mapping of sections"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"), [])
    assert load_config(write(tmp_path / "empty.yaml", ""), []) == load_config(None, [])


def test_malformed_yaml_reports_the_line(tmp_path):
    bad = write(tmp_path / "tab.yaml", "train:\n  iterations: 5\n  seed: : 3\n")
    with pytest.raises(UserError, match=r"tab\.yaml at line 3"):
        load_config(bad, [])


def test_round_trip(tmp_path):
    cfg = load_config(None, ["data.scale_range=[0.75,1.25]", "optim.lr=1e-4", "model.weights=ckpt/w.pth", "train.amp=true"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path, []) == cfg
    assert config_to_dict(load_config(path, [])) == config_to_dict(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind
    save_config(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, seed=5)), path)  # replaces
    assert load_config(path, []).train.seed == 5


def test_base_inheritance(tmp_path):
    write(tmp_path / "base.yaml", "data:\n  crop_size: 129\n  batch_size: 3\nprcl:\n  temperature: 0.5\n")
    (tmp_path / "presets").mkdir()
    child = write(tmp_path / "presets" / "child.yaml", "_base_: ../base.yaml\ndata:\n  batch_size: 8\n")
    cfg = load_config(child, ["prcl.num_queries=64"])
    assert cfg.data.crop_size == 129  # from the base
    assert cfg.data.batch_size == 8  # the child overrides the base
    assert cfg.prcl.temperature == 0.5 and cfg.prcl.num_queries == 64
    write(tmp_path / "a.yaml", "_base_: b.yaml\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\n")
    with pytest.raises(UserError, match="cycle"):
        load_config(tmp_path / "a.yaml", [])
    with pytest.raises(UserError, match="config file not found"):
        load_config(write(tmp_path / "orphan.yaml", "_base_: missing.yaml\n"), [])


def test_list_and_bool_overrides():
    cfg = load_config(None, ["data.scale_range=[0.75,1.25]", "eval.scales=[0.5, 1, 1.5]"])
    assert cfg.data.scale_range == [0.75, 1.25]
    assert cfg.eval.scales == [0.5, 1.0, 1.5] and all(isinstance(s, float) for s in cfg.eval.scales)
    for text, expected in [("true", True), ("false", False), ("True", True), ("no", False), ("yes", True)]:
        assert load_config(None, [f"train.amp={text}"]).train.amp is expected
    assert load_config(None, ["optim.nesterov=false"]).optim.nesterov is False
    cfg = load_config(None, ["data.root=null", "train.out_dir=2024", "train.epoch_iterations=125"])
    assert cfg.data.root is None and cfg.train.out_dir == "2024" and cfg.train.epoch_iterations == 125


def test_apply_overrides_returns_a_new_checked_config():
    cfg = load_config(None, [])
    changed = apply_overrides(cfg, ["method.name=mean_teacher", "data.demo.image_size=64"])
    assert changed.method.name == "mean_teacher" and changed.data.demo.image_size == 64
    assert cfg.method.name == "prcl"  # the input is untouched
    with pytest.raises(UserError, match="did you mean 'method.name'"):
        apply_overrides(cfg, ["method.nmae=prcl"])
