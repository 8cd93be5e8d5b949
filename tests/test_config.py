"""Configuration: defaults, YAML + overrides, _base_ presets, error messages, round trip, atomic writes."""

import pickle
from pathlib import Path

import pytest

from prcl.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    resolve_config,
    save_config,
    validate_config,
)
from prcl.errors import UserError
from prcl.io import atomic_write


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


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
    assert cfg.optim.lr == 1e-3  # 1e-3 is a float (parsed, so exactly 1e-3), not PyYAML's string
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
        ("train.accumulate=0", "train.accumulate must be >= 1, got 0"),
        ("train.accumulate=-2", "train.accumulate must be >= 1, got -2"),
        ("train.accumulate=1.5", "config key 'train.accumulate' expects int, got 1.5"),
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



def test_duplicate_keys_are_named_with_their_lines(tmp_path):
    sections = write(tmp_path / "two_trains.yaml",
                     "train:\n  seed: 1\ndata:\n  crop_size: 65\ntrain:\n  iterations: 5\n")
    with pytest.raises(UserError) as error:
        load_config(sections, [])
    assert str(error.value) == (f"duplicate key 'train' in {sections} at lines 1 and 5; merge the two sections")
    nested = write(tmp_path / "nested.yaml", "data:\n  demo:\n    seed: 1\n    num_train: 9\n    seed: 2\n")
    with pytest.raises(UserError, match=r"^duplicate key 'data\.demo\.seed' in .*nested\.yaml at lines 3 and 5; "
                                        r"keep only one$"):
        load_config(nested, [])
    three = write(tmp_path / "three.yaml", "optim:\n  lr: 1\n  lr: 2\n  lr: 3\n")
    with pytest.raises(UserError, match=r"'optim\.lr' in .*three\.yaml at lines 2, 3 and 4; keep only one"):
        load_config(three, [])
    with pytest.raises(UserError, match=r"^duplicate key 'a' in '\{a: 1, a: 2\}'; keep only one$"):
        load_config(None, ["data={a: 1, a: 2}"])
    write(tmp_path / "base.yaml", "train:\n  seed: 1\n  iterations: 5\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain:\n  seed: 2\n")
    cfg = load_config(child, [])  # the same key in a file and its _base_ overrides, it is no duplicate
    assert (cfg.train.seed, cfg.train.iterations) == (2, 5)
    same_name = write(tmp_path / "same_name.yaml", "data:\n  demo:\n    seed: 3\ntrain:\n  seed: 2\n")
    cfg = load_config(same_name, [])  # one name in two sections is no duplicate either
    assert (cfg.data.demo.seed, cfg.train.seed) == (3, 2)

def test_round_trip(tmp_path):
    cfg = load_config(None, ["data.scale_range=[0.75,1.25]", "optim.lr=1e-4", "model.weights=ckpt/w.pth", "train.amp=true"])
    path = tmp_path / "run" / "config.yaml"
    save_config(cfg, path)
    assert load_config(path, []) == cfg
    assert config_to_dict(load_config(path, [])) == config_to_dict(cfg)
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]  # no temporary file left behind
    save_config(cfg.model_copy(update={"train": cfg.train.model_copy(update={"seed": 5})}), path)  # replaces
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


def test_unknown_nested_key_suggests_the_dotted_key_from_a_file_and_an_override(tmp_path):
    path = write(tmp_path / "nested.yaml", "data:\n  demo:\n    imge_size: 64\n")
    with pytest.raises(UserError) as error:
        load_config(path, [])
    message = str(error.value)
    assert "unknown config key 'data.demo.imge_size'" in message and "nested.yaml" in message
    assert "did you mean 'data.demo.image_size'?" in message and "\n" not in message
    with pytest.raises(UserError, match=r"'data\.demo\.num_trian' \(override 'data\.demo\.num_trian=5'\); "
                                        r"did you mean 'data\.demo\.num_train'\?"):
        load_config(None, ["data.demo.num_trian=5"])
    with pytest.raises(UserError, match="did you mean 'train.amp'"):  # a misspelt section
        load_config(None, ["trian.amp=true"])


def test_wrong_type_in_a_file_names_the_dotted_key_and_the_file(tmp_path):
    path = write(tmp_path / "types.yaml", "data:\n  demo:\n    num_classes: many\n")
    with pytest.raises(UserError) as error:
        load_config(path, [])
    message = str(error.value)
    assert message.startswith("config key 'data.demo.num_classes' expects int, got 'many' in ")
    assert message.endswith("types.yaml") and "\n" not in message
    with pytest.raises(UserError, match=r"'model\.output_stride' must be one of 8, 16, got 32 in .*stride\.yaml"):
        load_config(write(tmp_path / "stride.yaml", "model:\n  output_stride: 32\n"), [])
    with pytest.raises(UserError, match=r"'eval\.scales\[1\]' expects float, got 'x'"):
        load_config(None, ["eval.scales=[1.0, x]"])
    with pytest.raises(UserError, match=r"'train\.out_dir' expects str, got 2024 in .*out\.yaml"):
        load_config(write(tmp_path / "out.yaml", "train:\n  out_dir: 2024\n"), [])  # only overrides keep text
    with pytest.raises(UserError, match=r"'optim\.lr' expects float, got True"):
        load_config(None, ["optim.lr=true"])


def test_range_error_from_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "range.yaml", "data:\n  crop_size: 16\n")
    with pytest.raises(UserError, match=r"data\.crop_size must be >= 32, got 16 in .*range\.yaml"):
        load_config(path, [])
    with pytest.raises(UserError, match=r"eval\.scales must list at least one scale"):
        load_config(None, ["eval.scales=[]"])
    with pytest.raises(UserError, match=r"prcl\.min_value \(2\.0\) must not exceed prcl\.max_value"):
        load_config(None, ["prcl.min_value=2"])
    with pytest.raises(UserError, match=r"eval\.stride \(65\) must not exceed eval\.window \(64\)"):
        load_config(None, ["eval.window=64", "eval.stride=65"])
    with pytest.raises(UserError, match="optim.nesterov=true needs optim.momentum > 0"):
        load_config(None, ["optim.momentum=0"])


def test_numbers_and_nulls():
    cfg = load_config(None, ["train.iterations=1e4", "optim.lr=1", "prcl.temperature=5e-1", "data.root=None",
                             "model.weights=none", "data.num_classes=~", "data.splits=null"])
    assert cfg.train.iterations == 10_000 and isinstance(cfg.train.iterations, int)
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.prcl.temperature == 0.5
    assert cfg.data.root is None and cfg.model.weights is None and cfg.data.splits is None
    assert cfg.data.num_classes == cfg.data.demo.num_classes  # null, then derived
    assert load_config(None, ["method.mix=none"]).method.mix == "none"  # a choice, not null
    with pytest.raises(UserError, match=r"'train\.iterations' expects int, got 1\.5"):
        load_config(None, ["train.iterations=1.5"])
    with pytest.raises(UserError, match=r"'data\.crop_size' expects int, got True"):
        load_config(None, ["data.crop_size=true"])
    with pytest.raises(UserError, match=r"'train\.amp' expects bool, got 1"):
        load_config(None, ["train.amp=1"])


def test_null_section_header_keeps_the_defaults_and_non_mapping_sections_fail(tmp_path):
    assert load_config(write(tmp_path / "empty_section.yaml", "data:\ntrain:\n  seed: 3\n"), []).train.seed == 3
    with pytest.raises(UserError, match=r"'data\.demo' is a section: give its keys .*got \[1, 2\] in .*list\.yaml"):
        load_config(write(tmp_path / "list.yaml", "data:\n  demo: [1, 2]\n"), [])
    with pytest.raises(UserError, match="must be a name such as 'data'"):
        config_from_dict({3: {}}, "ckpt.pt")


def test_base_cycle_and_base_list(tmp_path):
    write(tmp_path / "one.yaml", "_base_: two.yaml\ntrain:\n  seed: 1\n")
    write(tmp_path / "two.yaml", "_base_: [three.yaml]\n")
    write(tmp_path / "three.yaml", "_base_: one.yaml\n")
    with pytest.raises(UserError) as error:
        load_config(tmp_path / "one.yaml", [])
    message = str(error.value)
    assert "in a cycle" in message and message.count("one.yaml") == 2 and "three.yaml" in message
    write(tmp_path / "lr.yaml", "optim:\n  lr: 1e-2\ntrain:\n  seed: 4\n")
    write(tmp_path / "seed.yaml", "train:\n  seed: 5\n")
    cfg = load_config(write(tmp_path / "both.yaml", "_base_: [lr.yaml, seed.yaml]\n"), [])
    assert (cfg.optim.lr, cfg.train.seed) == (1e-2, 5)  # merged in order
    with pytest.raises(UserError, match="must be a file name or a list of file names"):
        load_config(write(tmp_path / "bad_base.yaml", "_base_: 3\n"), [])


def test_config_yaml_round_trip_writes_lists_inline_and_pickles(tmp_path):
    cfg = load_config(None, ["eval.scales=[0.5,1.0,1.5]", "train.out_dir=runs/{data.num_labels}_{method.name}",
                             "data.dataset=voc", "data.root=/data/voc", "train.epochs=3", "train.epoch_images=2000",
                             "train.iterations=null"])
    assert cfg.train.out_dir == "runs/662_prcl" and cfg.train.iterations == 3 * cfg.train.epoch_iterations
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    text = path.read_text(encoding="utf-8")
    assert "scales: [0.5, 1.0, 1.5]" in text and "scale_range: [0.5, 1.5]" in text and "data:\n  dataset: voc" in text
    loaded = load_config(path, [])
    assert loaded == cfg and config_to_dict(loaded) == config_to_dict(cfg)
    assert config_from_dict(config_to_dict(cfg), "ckpt.pt") == cfg
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    validate_config(cfg)
    loaded.train.out_dir = "elsewhere"  # sections stay mutable; the original is not shared
    assert cfg.train.out_dir == "runs/662_prcl"


def test_out_dir_with_an_unknown_name_is_a_user_error():
    with pytest.raises(UserError, match=r"train\.out_dir 'runs/\{data\.nope\}' names"):
        load_config(None, ["train.out_dir=runs/{data.nope}"])


def test_atomic_write_replaces_or_keeps_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "file.txt"
    with atomic_write(path, "w") as stream:
        stream.write("old ü\n")
    assert path.read_text(encoding="utf-8") == "old ü\n"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(path, "w") as stream:
            stream.write("half of the new")
            assert [p.name for p in path.parent.iterdir() if p.name.startswith(".file.txt.")]  # the temporary
            raise RuntimeError("boom")
    assert path.read_text(encoding="utf-8") == "old ü\n"
    assert [p.name for p in path.parent.iterdir()] == ["file.txt"]
    with atomic_write(path, "wb") as stream:
        stream.write(b"\x00new")
    assert path.read_bytes() == b"\x00new" and [p.name for p in path.parent.iterdir()] == ["file.txt"]


# ----------------------------------------------------------------------------- issue 20: bounds and short messages


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("optim.lr=1e300", "optim.lr must be <= 10"),  # SGD overflows the weights
        ("optim.uncer_lr=11", "optim.uncer_lr must be <= 10"),
        ("prcl.temperature=1e-300", "prcl.temperature must be >= 0.001"),  # 0 in float32: MLS / 0
        ("data.crop_size=12345678901234567890", "data.crop_size must be <= 4096"),  # a 34 GB allocation
        ("data.demo.image_size=4097", "data.demo.image_size must be <= 4096"),
        ("eval.window=5000", "eval.window must be <= 4096"),
        ("eval.scales=[1.0,1e6]", "eval.scales[1] must be <= 8"),
        ("data.scale_range=[0.5,9]", "data.scale_range must be [low, high] with 0 < low <= high <= 8"),
        ("method.strong_scale_range=[1,1e9]", "method.strong_scale_range must be [low, high]"),
        ("data.split_seed=-1", "data.split_seed must be >= 0"),  # numpy: expected non-negative integer
        ("data.demo.seed=-1", "data.demo.seed must be >= 0"),
        ("train.seed=4294967296", "train.seed must be <= 4294967295"),
        ("prcl.variance_scale=1e-300", "prcl.variance_scale must be between 1e-06 and 1e+06"),  # variances 0
        ("prcl.variance_scale=1e7", "prcl.variance_scale must be between 1e-06 and 1e+06"),
        ("optim.weight_decay=2", "optim.weight_decay must be <= 1"),
        ("prcl.num_negatives=1000000000", "prcl.num_negatives must be <= 4194304"),
        ("data.demo.num_train=1000000000", "data.demo.num_train must be <= 100000"),  # renders every image
        ("data.demo.num_test=100001", "data.demo.num_test must be <= 100000"),
    ],
)
def test_values_past_their_bounds_are_one_line_naming_the_key(override, fragment):
    with pytest.raises(UserError) as error:
        load_config(None, [override])
    message = str(error.value)
    assert message.startswith(fragment) and "\n" not in message and override in message


def test_the_bounds_themselves_are_accepted():
    cfg = load_config(None, ["optim.lr=10", "optim.uncer_lr=10", "prcl.temperature=0.001", "data.crop_size=4096",
                             "eval.scales=[8]", "data.scale_range=[0.5,8]", "train.seed=4294967295",
                             "data.split_seed=0", "eval.window=4096", "prcl.variance_scale=1e-6",
                             "optim.weight_decay=1", "prcl.num_queries=2048", "prcl.num_negatives=2048",
                             "data.demo.num_train=100000"])
    assert (cfg.optim.lr, cfg.prcl.temperature, cfg.data.crop_size, cfg.train.seed) == (10, 0.001, 4096, 2**32 - 1)
    assert cfg.eval.scales == [8.0] and cfg.data.scale_range == [0.5, 8.0]
    assert (cfg.prcl.variance_scale, cfg.optim.weight_decay, cfg.data.demo.num_train) == (1e-6, 1.0, 100000)
    assert load_config(None, ["prcl.variance_scale=1e6"]).prcl.variance_scale == 1e6


def test_contrast_pairs_past_their_bound_are_one_line_naming_both_keys():
    with pytest.raises(UserError) as error:
        load_config(None, ["prcl.num_queries=4096", "prcl.num_negatives=2048"])  # 2^23 pairs per class
    message = str(error.value)
    assert message.startswith("prcl.num_queries x prcl.num_negatives (4096 x 2048) must be at most 4194304")
    assert "\n" not in message


def test_out_dir_naming_a_section_or_too_long_a_name_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"names \{data\} in braces, which is a whole section, not a key"):
        load_config(None, [f"train.out_dir={tmp_path}/{{data}}"])  # its text: every data.* value, >255 bytes
    with pytest.raises(UserError, match=r"names \{data\[0\]\} in braces, which is not a config key"):
        load_config(None, ["train.out_dir=runs/{data[0]}"])
    with pytest.raises(UserError) as error:
        load_config(None, [f"train.out_dir={tmp_path}/{'é' * 128}"])  # 256 bytes in UTF-8
    message = str(error.value)
    assert message.startswith("train.out_dir holds a name of 256 bytes") and "255" in message and len(message) < 200
    with pytest.raises(UserError, match=r"^train.out_dir is 4\d\d\d bytes long .*4096"):
        load_config(None, ["train.out_dir=" + "/".join(["d" * 200] * 21)])
    assert load_config(None, [f"train.out_dir={tmp_path}/{'é' * 127}"]).train.out_dir.endswith("é")  # 254 bytes


def _laughs(levels: int, width: int = 9) -> str:
    """A YAML document whose key data.crop_size holds ``width ** levels`` ones through nested aliases."""
    lines = ["lol0: &lol0 [" + ", ".join(["1"] * width) + "]"]
    lines += [f"lol{k}: &lol{k} [" + ", ".join([f"*lol{k - 1}"] * width) + "]" for k in range(1, levels)]
    return "anchors:\n" + "".join(f"  {line}\n" for line in lines) + f"data:\n  crop_size: *lol{levels - 1}\n"


def test_a_billion_laughs_is_refused_in_one_short_line(tmp_path):
    path = write(tmp_path / "laughs.yaml", _laughs(9))  # 9**9 = 387 million ones once expanded
    with pytest.raises(UserError) as error:
        load_config(path, [])
    message = str(error.value)
    assert "\n" not in message and len(message) < 300
    assert str(path) in message and "aliases" in message and "more than 100000 values" in message
    with pytest.raises(UserError, match="expand to a value that contains itself"):
        load_config(write(tmp_path / "loop.yaml", "data:\n  scale_range: &a [1, *a]\n"), [])
    value = "[&a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1], " + ", ".join(["*a"] * 20_000) + "]"
    with pytest.raises(UserError) as error:  # an override's value: the same limit
        load_config(None, [f"data.crop_size={value}"])
    assert "override value" in str(error.value) and len(str(error.value)) < 300


def test_long_values_are_cut_short_in_every_message(tmp_path):
    # under the alias limit, but still 66429 numbers (some 200 kB as text) where one int belongs
    rows = ["&l0 [" + ", ".join(["1"] * 9) + "]"]
    rows += [f"&l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, 5)]
    path = write(tmp_path / "wide.yaml", "data:\n  crop_size:\n" + "".join(f"    - {row}\n" for row in rows))
    with pytest.raises(UserError) as error:
        load_config(path, [])
    message = str(error.value)
    assert message.startswith("config key 'data.crop_size' expects int, got [[1, 1, 1") and "..." in message
    assert str(path) in message and len(message) < 300
    for override in ["data.crop_size=" + "7" * 100_000, "train.out_dir=" + "x" * 100_000 + "/{nope}",
                     "model.encoder=" + " " * 100_000, "data=" + "[1]" * 50_000, "train.device=" + "q" * 100_000]:
        with pytest.raises(UserError) as error:
            load_config(None, [override])
        assert "\n" not in str(error.value) and len(str(error.value)) < 400, override[:30]
    digits = write(tmp_path / "digits.yaml", "data:\n  crop_size: " + "9" * 5000 + "\n")  # int() refuses it
    with pytest.raises(UserError, match=r"malformed YAML in .*digits.yaml at line 2.*5000 digits"):
        load_config(digits, [])


def test_a_missing_base_names_the_file_that_names_it(tmp_path):
    child = write(tmp_path / "child.yaml", "_base_: [parent.yaml]\n")
    write(tmp_path / "parent.yaml", "_base_: gone.yaml\n")
    with pytest.raises(UserError) as error:
        load_config(child, [])
    message = str(error.value)
    assert message.startswith(f"config file not found: {tmp_path / 'gone.yaml'} (named as _base_ in ")
    assert "parent.yaml" in message and "child.yaml" not in message and "\n" not in message


def test_cpu_info_reads_model_and_flags_of_x86_and_arm(tmp_path):
    from prcl.devices import cpu_info

    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                   "processor\t: 1\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    assert cpu_info(x86) == ("AMD EPYC 9R14", frozenset({"fpu", "avx2", "avx512f", "avx512_bf16"}))
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd sve bf16\nCPU part\t: 0xd4f\n")
    model, flags = cpu_info(arm)
    assert flags == frozenset({"fp", "asimd", "sve", "bf16"}) and model  # no model name line: the machine's name
    model, flags = cpu_info(tmp_path / "missing")  # not Linux: the platform's processor name, no flags
    assert flags == frozenset() and model
