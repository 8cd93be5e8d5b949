"""Class names and colours (issue 19): classes.txt / classes.yaml beside the data, data.class_names and
data.class_colors, and where they go: the eval table, the checkpoint, predict's masks and overlays."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prcl.checkpoint import load_checkpoint
from prcl.cli import main
from prcl.config import load_config
from prcl.data import CITYSCAPES_CLASS_COLORS, read_classes_file, run_classes, voc_color_map
from prcl.errors import UserError
from prcl.infer.visualize import overlay

from tiny_run import tiny_overrides

NAMES = ["background", "crack", "rust", "paint"]
COLORS = [(10, 20, 30), (250, 0, 0), (0, 200, 0), (0, 0, 240)]


def _folder_data(root: Path, classes_file: tuple[str, str] | None = None) -> Path:
    """8 images (64x64) whose masks hold the 4 classes in quarters, splits under root/splits/2/0 and,
    when given, a classes file (file name, text)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    ids = [f"img{i}" for i in range(8)]
    for i, image_id in enumerate(ids):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{image_id}.png")
        mask = np.zeros((64, 64), np.uint8)
        mask[:32, 32:], mask[32:, :32], mask[32:, 32:] = 1, 2, 3
        Image.fromarray(np.roll(mask, i, axis=1), mode="L").save(root / "masks" / f"{image_id}.png")
    split = root / "splits" / "2" / "0"
    split.mkdir(parents=True)
    for name, listed in {"labeled": ids[:4], "unlabeled": ids[4:6], "valid": ids[6:]}.items():
        (split / f"{name}_filename.txt").write_text("".join(f"{i}\n" for i in listed))
    if classes_file is not None:
        (root / classes_file[0]).write_text(classes_file[1])
    return root


def _folder_overrides(root: Path, out: Path, **extra) -> list[str]:
    return tiny_overrides(root, out, method="supervised", iterations=1, **{
        "data.dataset": "folder", "data.splits": str(root / "splits"), "data.num_labels": 2,
        "data.num_classes": 4, "train.tensorboard": "false", **extra})


def _config(root: Path, **extra):
    return load_config(None, _folder_overrides(root, root / "run", **extra))




# ----------------------------------------------------------------------------- reading the files


def test_classes_txt_gives_names_and_optional_colours(tmp_path: Path) -> None:
    path = tmp_path / "classes.txt"
    path.write_text("# my classes\n\nbackground: 10 20 30\ntraffic light:250,170,30\n\n  rust  \n")
    assert read_classes_file(path) == [("background", (10, 20, 30)), ("traffic light", (250, 170, 30)),
                                       ("rust", None)]


def test_classes_yaml_gives_names_and_optional_colours(tmp_path: Path) -> None:
    path = tmp_path / "classes.yaml"
    path.write_text("- background\n- {name: crack, color: [250, 0, 0]}\n- name: rust\n  color: [0, 200, 0]\n"
                    "- name: paint\n")
    assert read_classes_file(path) == [("background", None), ("crack", (250, 0, 0)), ("rust", (0, 200, 0)),
                                       ("paint", None)]


def test_a_folder_run_takes_the_file_and_the_config_wins(tmp_path: Path) -> None:
    text = "".join(f"{n}: {r} {g} {b}\n" for n, (r, g, b) in zip(NAMES[:3], COLORS)) + "paint\n"
    root = _folder_data(tmp_path / "data", ("classes.txt", text))
    classes = run_classes(_config(root).data, root)
    assert classes.names == NAMES
    # the class without a colour gets the default palette's colour of its index
    assert classes.colors == [*COLORS[:3], tuple(int(v) for v in voc_color_map(4)[3])]
    # data.class_names replaces the file (which is then not read: a broken one does not matter)
    (root / "classes.txt").write_text("a: 1 2\n")
    renamed = run_classes(_config(root, **{"data.class_names": "[w,x,y,z]"}).data, root)
    assert renamed.names == ["w", "x", "y", "z"] and renamed.colors == [tuple(c) for c in voc_color_map(4)]
    recoloured = run_classes(_config(root, **{"data.class_names": "[w,x,y,z]",
                                              "data.class_colors": json.dumps([list(c) for c in COLORS])}).data, root)
    assert recoloured.colors == COLORS


def test_known_datasets_keep_their_names_and_colours(tmp_path: Path) -> None:
    cityscapes = run_classes(load_config(None, ["data.dataset=cityscapes", "data.root=x"]).data, None)
    assert cityscapes.names[:2] == ["road", "sidewalk"] and cityscapes.colors[0] == (128, 64, 128)
    assert cityscapes.colors == list(CITYSCAPES_CLASS_COLORS) and len(set(cityscapes.colors)) == 19
    voc = run_classes(load_config(None, ["data.dataset=voc", "data.root=x"]).data, None)
    assert voc.names[0] == "background" and voc.names[15] == "person" and voc.colors[15] == (192, 128, 128)
    demo = run_classes(load_config(None, ["data.demo.num_classes=4"]).data, None)
    assert demo.names == ["brick", "grass", "gravel", "fur"] and len(set(demo.colors)) == 4


@pytest.mark.parametrize("name, text, words", [
    ("classes.txt", "a: 1 2 3\nb: 300 0 0\n", ["classes.txt line 2", "'b'", "three integers 0..255", "300 0 0"]),
    ("classes.txt", "a: 1 2\n", ["line 1", "three integers", "'1 2'"]),
    ("classes.txt", "a: red\n", ["line 1", "'red'"]),
    ("classes.txt", "a\n: 1 2 3\n", ["line 2", "no class name"]),
    ("classes.txt", "a\nb\na\n", ["'a' twice", "classes 0 and 2"]),
    ("classes.txt", "# nothing\n\n", ["names no class"]),
    ("classes.yaml", "- a\n- {name: b, color: [1, 2]}\n", ["class 1", "'b'", "three integers 0..255", "[1, 2]"]),
    ("classes.yaml", "- a\n- {name: b, color: [0, 0, -1]}\n", ["class 1", "[0, 0, -1]"]),
    ("classes.yaml", "- a\n- {name: b, colour: [1, 2, 3]}\n", ["class 1", "unknown key 'colour'", "color"]),
    ("classes.yaml", "- a\n- no\n", ["class 1", "False", "quote"]),
    ("classes.yaml", "names: [a, b]\n", ["must hold a list", "got dict"]),
    ("classes.yaml", "- a\n- [b\n", ["malformed YAML", "classes.yaml"]),
])
def test_a_bad_classes_file_is_one_line_naming_it(tmp_path: Path, name: str, text: str, words: list[str]) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as error:
        read_classes_file(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message


def test_both_classes_files_are_refused(tmp_path: Path) -> None:
    root = _folder_data(tmp_path / "data", ("classes.txt", "\n".join(NAMES)))
    (root / "classes.yaml").write_text(json.dumps(NAMES))
    with pytest.raises(UserError, match="both classes.yaml and classes.txt"):
        run_classes(_config(root).data, root)


# ----------------------------------------------------------------------------- through the command line


@pytest.mark.parametrize("classes_file, extra, words", [
    (("classes.txt", "a\nb\nc\n"), {}, ["classes.txt names 3 classes", "data.num_classes is 4"]),
    (("classes.yaml", "[a, b, c, d, e]"), {}, ["classes.yaml names 5 classes", "data.num_classes is 4"]),
    (("classes.txt", "a: 1 2 3\nb: 1 2 3 4\nc\nd\n"), {}, ["classes.txt line 2", "three integers 0..255"]),
    (None, {"data.class_names": "[a,b,c]"}, ["data.class_names lists 3 names for 4 classes"]),
    (None, {"data.class_names": "[a,b,c,d]", "data.class_colors": "[[0,0,0],[1,1,1],[2,2,2],[0,256,0]]"},
     ["data.class_colors[3]", "three integers 0..255", "[0, 256, 0]"]),
])
def test_train_and_eval_refuse_bad_classes_in_one_line_creating_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], classes_file, extra: dict, words: list[str], error_line) -> None:
    root = _folder_data(tmp_path / "data", classes_file)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = tmp_path / "run"
    assert main(["train", "-c", os.devnull, *_folder_overrides(root, out, **extra)]) == 2
    line = error_line()
    for word in words:
        assert word in line, line
    assert not out.exists()
    # prcl eval reads the classes before it loads the checkpoint
    config = tmp_path / "config.yaml"
    config.write_text("")
    results = tmp_path / "eval.json"
    assert main(["eval", "-c", str(config), "--checkpoint", str(tmp_path / "any.pt"), "--out", str(results),
                 *_folder_overrides(root, out, **extra)]) == 2
    assert words[0] in error_line()
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == sorted([*before, Path("config.yaml")])


@pytest.mark.slow  # trains one step
def test_names_and_colours_reach_eval_the_checkpoint_and_predict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entries = [{"name": n, "color": list(c)} for n, c in zip(NAMES, COLORS)]
    root = _folder_data(tmp_path / "data", ("classes.yaml", json.dumps(entries)))
    out = tmp_path / "run"
    assert main(["train", "-c", os.devnull, *_folder_overrides(root, out)]) == 0
    checkpoint = out / "checkpoints" / "last.pt"
    state = load_checkpoint(checkpoint)
    assert state["class_names"] == NAMES and [tuple(c) for c in state["class_colors"]] == COLORS
    capsys.readouterr()

    assert main(["eval", "-c", str(out / "config.yaml"), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "eval.json")]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [row.split()[0] for row in rows[1:5]] == NAMES
    assert json.loads((tmp_path / "eval.json").read_text())["class_names"] == NAMES

    # predict needs no data: the checkpoint knows the names and colours
    (root / "classes.yaml").unlink()
    image = root / "images" / "img6.png"
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "pred")]) == 0
    with Image.open(tmp_path / "pred" / "img6_mask.png") as mask_png:
        assert mask_png.getpalette()[: 3 * len(COLORS)] == [v for c in COLORS for v in c]
        classes = np.asarray(mask_png)
        drawn = np.asarray(mask_png.convert("RGB"))
    assert np.array_equal(drawn, np.asarray(COLORS, np.uint8)[classes])
    picture = np.asarray(Image.open(image).convert("RGB"))
    with Image.open(tmp_path / "pred" / "img6_overlay.png") as overlay_png:
        blended = np.asarray(overlay_png)
    assert np.array_equal(blended, overlay(picture, classes, colors=COLORS))
    expected = np.rint(0.5 * picture + 0.5 * np.asarray(COLORS)[classes])
    assert np.abs(blended.astype(int) - expected).max() <= 1
