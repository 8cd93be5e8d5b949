"""The paper configs on VOC and Cityscapes trees: what a wrong tree says, before any training starts."""

from __future__ import annotations

from pathlib import Path


from prcl.cli import main
from prcl.data.published import published_splits

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _touch(paths) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()


def _voc_tree(root: Path, num_labels: int = 92, masks: bool = True) -> Path:
    """Empty files where a VOC run with the published split ``num_labels`` looks for them."""
    voc = root / "VOCdevkit" / "VOC2012"
    splits = published_splits("voc", num_labels)
    _touch(voc / "JPEGImages" / f"{i}.jpg" for i in (*splits.labeled, *splits.unlabeled, *splits.valid))
    if masks:
        _touch(voc / "SegmentationClassAug" / f"{i}.png" for i in (*splits.labeled, *splits.valid))
    return voc


def _train(capsys, config: str, root: Path, out: Path, *overrides: str) -> tuple[int, str]:
    code = main(["train", "-c", str(CONFIGS / config), f"data.root={root}", "model.weights=null",
                 f"train.out_dir={out}", *overrides])
    return code, capsys.readouterr().err


def test_voc_without_segmentation_class_aug_stops_before_training(tmp_path, capsys):
    voc = _voc_tree(tmp_path, masks=False)
    code, err = _train(capsys, "voc_classic.yaml", voc, tmp_path / "run")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "SegmentationClassAug" in err and "docs/datasets.md" in err
    assert not (tmp_path / "run").exists()


def test_split_naming_missing_files_gives_count_and_first_names(tmp_path, capsys):
    voc = _voc_tree(tmp_path)
    labeled = published_splits("voc", 92).labeled
    for image_id in labeled[:5]:
        (voc / "JPEGImages" / f"{image_id}.jpg").unlink()
    code, err = _train(capsys, "voc_classic.yaml", voc, tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "5 " in err and labeled[0] in err and labeled[1] in err
    assert not (tmp_path / "run").exists()


def test_cityscapes_tree_with_wrong_folder_names_says_what_it_found(tmp_path, capsys):
    wrong = tmp_path / "cityscapes"
    (wrong / "leftImg8bit_trainvaltest" / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
    (wrong / "gtFine_trainvaltest" / "gtFine" / "train" / "aachen").mkdir(parents=True)
    code, err = _train(capsys, "cityscapes.yaml", wrong, tmp_path / "run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "leftImg8bit/train" in err and "leftImg8bit_trainvaltest" in err and "docs/datasets.md" in err
    assert not (tmp_path / "run").exists()


def test_unpublished_count_without_split_folder_names_the_published_counts(tmp_path, capsys):
    voc = _voc_tree(tmp_path)
    code, err = _train(capsys, "voc_blended.yaml", voc, tmp_path / "run", "data.num_labels=500")
    assert code == 2 and "662, 732, 1323" in err and "data.splits" in err


def test_cityscapes_150_split_folder_without_valid_list_validates_on_published_val(tmp_path):
    """The release's 150 split with its valid list (test-split images) removed."""
    from prcl.config import load_config
    from prcl.engine.data_setup import read_run_splits

    folder = tmp_path / "splits" / "150" / "3407"
    folder.mkdir(parents=True)
    train = published_splits("cityscapes", 186)
    (folder / "labeled_filename.txt").write_text("\n".join(train.labeled[:150]))
    (folder / "unlabeled_filename.txt").write_text("\n".join(train.labeled[150:] + train.unlabeled))
    cfg = load_config(CONFIGS / "cityscapes_150.yaml", [f"data.splits={tmp_path / 'splits'}"])
    splits = read_run_splits(cfg, tmp_path)
    assert len(splits.labeled) == 150 and len(splits.unlabeled) == 2975 - 150
    assert splits.valid == published_splits("cityscapes", 186).valid and len(splits.valid) == 500
