"""`prcl predict` on a tiny saved checkpoint: folders, globs, broken files, probabilities, protocols."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prcl.checkpoint import save_checkpoint
from prcl.cli import main
from prcl.config import config_to_dict, load_config
from prcl.infer import Predictor
from prcl.infer.visualize import palette

from tiny_run import tiny_networks
from tolerances import assert_within, network_bound, probability_bound, probability_sum_bound, summation_bound

NUM_CLASSES = 3


@torch.no_grad()
def _probability_rounding(predictor: Predictor, picture: np.ndarray) -> float:
    """How far another float32 forward pass (another batch, other kernels) may move the picture's
    probabilities: a forward pass's rounding of its logits (tolerances.network_bound), halved by the softmax."""
    return probability_bound(network_bound(predictor.model(predictor._to_tensor(picture)).logits))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny resnet18 segmenter with a probability head, saved as a training checkpoint (as in test_infer)."""
    torch.manual_seed(0)
    cfg, student, _, head = tiny_networks(NUM_CLASSES)
    path = tmp_path_factory.mktemp("run") / "best.pt"
    save_checkpoint(path, {"config": cfg, "student": student.state_dict(),
                           "probability_head": head.state_dict(), "iteration": 1})
    return path


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """photos/sub/a.png (40x56), photos/sub/deeper/b.jpg (33x45) and photos/x.png (random bytes)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    (folder / "sub" / "deeper").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / "sub" / "a.png")
    Image.fromarray(rng.integers(0, 256, (33, 45, 3), dtype=np.uint8)).save(folder / "sub" / "deeper" / "b.jpg")
    (folder / "x.png").write_bytes(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
    (folder / "notes.txt").write_text("not an image")
    return folder


def _one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("prcl") and "Traceback" not in err
    return lines[0]


def test_a_broken_file_is_skipped_and_the_others_written(
    checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = photos / "pred"  # inside the input folder: its outputs are never taken as inputs
    assert main(["predict", "--checkpoint", str(checkpoint), str(photos), "--out", str(out)]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1].startswith("2 written, 1 failed")
    skipped = [line for line in captured.err.splitlines() if line.startswith("prcl: skipped")]
    assert len(skipped) == 1 and "x.png" in skipped[0] and "cannot decode" in skipped[0], captured.err
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{stem}_{kind}.png" for stem in ("a", "b") for kind in ("mask", "overlay", "uncertainty"))
    flat_palette = palette(256).reshape(-1).tolist()
    for stem, size in (("a", (56, 40)), ("b", (45, 33))):
        with Image.open(out / f"{stem}_mask.png") as mask:
            assert mask.mode == "P" and mask.size == size
            assert mask.getpalette() == flat_palette
            assert np.asarray(mask).max() < NUM_CLASSES
        for kind in ("overlay", "uncertainty"):
            with Image.open(out / f"{stem}_{kind}.png") as picture:
                assert picture.mode == "RGB" and picture.size == size
    before = sorted(p.name for p in out.iterdir())
    assert main(["predict", "--checkpoint", str(checkpoint), str(photos), "--out", str(out)]) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("2 written, 1 failed")
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_glob_with_probabilities(
    checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pred"
    pattern = str(photos / "**" / "*.jpg")  # as quoted on a shell: expanded by prcl, recursively
    assert main(["predict", "--checkpoint", str(checkpoint), pattern, "--out", str(out), "--save-probs"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("1 written, 0 failed")
    assert sorted(p.name for p in out.iterdir()) == ["b_mask.png", "b_overlay.png", "b_probs.npy",
                                                      "b_uncertainty.png"]
    probs = np.load(out / "b_probs.npy")
    assert probs.shape == (NUM_CLASSES, 33, 45) and probs.dtype == np.float32
    # a softmax: the probabilities sum to 1 up to the float32 rounding of their steps
    assert_within(probs.sum(0), np.ones((33, 45)), probability_sum_bound(NUM_CLASSES))
    with Image.open(out / "b_mask.png") as mask:
        assert np.array_equal(np.asarray(mask), probs.argmax(0))


def test_sliding_windows_match_the_predictor(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    picture = np.random.default_rng(3).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "big.png")
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "big.png"), "--out", str(out),
                 "--protocol", "sliding", "--window", "32", "--stride", "20", "--save-probs"]) == 0
    predictor = Predictor.from_checkpoint(checkpoint)
    assert predictor.protocol == "whole"  # the config's eval protocol, replaced by the flags
    whole = predictor.predict(picture)
    predictor.protocol, predictor.window, predictor.stride = "sliding", 32, 20
    expected = predictor.predict(picture)
    assert np.array_equal(np.load(out / "big_probs.npy"), expected.probabilities)  # the CLI runs this predictor
    # the windows see other borders: the maps differ by more than another forward pass's rounding could explain
    assert np.abs(whole.probabilities - expected.probabilities).max() > _probability_rounding(predictor, picture)
    capsys.readouterr()
    for bad in (["--protocol", "whole", "--window", "32"], ["--window", "20", "--stride", "30"]):
        assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "big.png"), "--out",
                     str(tmp_path / "o2"), *bad]) == 2
        assert "--window" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o2").exists()


def test_nothing_to_predict_is_one_line_before_loading(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    missing_checkpoint = str(tmp_path / "never_loaded.pt")
    assert main(["predict", "--checkpoint", missing_checkpoint, str(empty), "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no images in folder" in line and str(empty) in line and "never_loaded" not in line
    pattern = str(tmp_path / "*.jpg")
    assert main(["predict", "--checkpoint", missing_checkpoint, pattern, "--out", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert f"no images match {pattern}" in line and "never_loaded" not in line
    assert not (tmp_path / "o").exists()


def test_an_empty_folder_beside_images_is_noted(
    checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "empty"), str(photos / "sub" / "a.png"),
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"prcl: no images in folder {tmp_path / 'empty'}; skipped" in captured.err.splitlines()
    assert captured.out.strip().splitlines()[-1].startswith("1 written, 0 failed")


def test_a_checkpoint_that_does_not_fit_is_one_line(
    checkpoint: Path, photos: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = torch.load(checkpoint, weights_only=True)
    wrong = tmp_path / "five_classes.pt"
    save_checkpoint(wrong, {**state, "config": config_to_dict(load_config(
        None, ["model.encoder=resnet18", "data.num_classes=5"]))})
    other = tmp_path / "resnet50.pt"
    save_checkpoint(other, {**state, "config": config_to_dict(load_config(
        None, ["model.encoder=resnet50", f"data.num_classes={NUM_CLASSES}"]))})
    bare = tmp_path / "no_config.pt"
    save_checkpoint(bare, {"student": state["student"]})
    for path in (wrong, other, bare):
        assert main(["predict", "--checkpoint", str(path), str(photos / "sub"), "--out", str(tmp_path / "o")]) == 2
        assert path.name in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_batches_give_the_predictions_of_single_images(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Five pictures of two sizes and a broken file between them: --batch 3 writes what --batch 1 writes."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "mixed"
    folder.mkdir()
    pictures = {}
    for name, (h, w) in zip("abcde", [(40, 56), (33, 45), (40, 56), (40, 56), (33, 45)]):
        pictures[name] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pictures[name]).save(folder / f"{name}.png")
    (folder / "c2.png").write_bytes(b"not a png")  # sorted between c and d
    outputs = {}
    for batch in (1, 3):
        out = tmp_path / f"batch{batch}"
        assert main(["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(out),
                     "--save-probs", "--batch", str(batch)]) == 1
        captured = capsys.readouterr()
        assert captured.out.strip().splitlines()[-1].startswith("5 written, 1 failed")
        assert sum("c2.png" in line for line in captured.err.splitlines()) == 1
        outputs[batch] = {name: np.load(out / f"{name}_probs.npy") for name in pictures}
    predictor = Predictor.from_checkpoint(checkpoint)
    together = predictor.predict_batch(list(pictures.values()))
    bounds = {name: _probability_rounding(predictor, picture) for name, picture in pictures.items()}
    for (name, picture), prediction in zip(pictures.items(), together):
        assert prediction.mask.shape == picture.shape[:2]
        # a batch of three runs other kernels than a batch of one: a forward pass's rounding (tolerances.py)
        assert_within(outputs[3][name], outputs[1][name], bounds[name], f"{name}: batch 3 vs 1")
        assert_within(prediction.probabilities, outputs[1][name], bounds[name], f"{name}: predict_batch vs 1")
        single = outputs[1][name]
        with Image.open(tmp_path / "batch3" / f"{name}_mask.png") as mask:
            other_class = np.asarray(mask) != single.argmax(0)
        # so a pixel's class may differ only where its two best probabilities are within twice that rounding
        second, best = np.sort(single, axis=0)[-2:]
        assert np.all(best[other_class] - second[other_class] <= 2 * bounds[name]), name
    # different pictures: maps that differ by more than rounding
    assert np.abs(outputs[1]["a"] - outputs[1]["c"]).max() > bounds["a"] + bounds["c"]
    assert main(["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(tmp_path / "b0"),
                 "--batch", "0"]) == 2
    assert "--batch" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "b0").exists()


def test_batches_hold_one_picture_size() -> None:
    """Grouping by size: transposed sizes (same pixel count) never share a batch; failures pass through."""
    from prcl.commands.predict import _size_batches

    shapes = {"a": (2, 3), "b": (3, 2), "c": (2, 3), "d": (2, 3), "e": (3, 2), "f": (5, 5)}
    items = [(Path(name), np.zeros((*shape, 3), np.uint8)) for name, shape in shapes.items()]
    items.insert(2, (Path("broken"), "cannot decode: test"))
    failures = []
    batches = list(_size_batches(items, 2, lambda path, why: failures.append((path.name, why))))
    assert failures == [("broken", "cannot decode: test")]
    assert sorted(path.name for batch in batches for path, _ in batch) == sorted(shapes)
    for batch in batches:
        assert 1 <= len(batch) <= 2
        assert len({picture.shape for _, picture in batch}) == 1
    assert [[path.name for path, _ in batch] for batch in batches][:2] == [["a", "c"], ["b", "e"]]


def test_uncertainty_map_is_the_entropy_by_default_or_the_variance(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from prcl.infer.visualize import heatmap

    picture = np.random.default_rng(5).integers(0, 256, (36, 44, 3), dtype=np.uint8)
    Image.fromarray(picture).save(tmp_path / "p.png")
    prediction = Predictor.from_checkpoint(checkpoint).predict(picture)
    p = np.clip(prediction.probabilities, 1e-12, 1)
    entropy = -(p * np.log(p)).sum(0) / np.log(NUM_CLASSES)
    # float32 here and in torch (other log implementations, other order): C positive terms and a division, a few
    # eps of the entropy, plus the clip's -1e-12 log 1e-12 = 2.8e-11 for each class at probability 0
    assert_within(prediction.entropy, entropy, summation_bound(entropy, NUM_CLASSES + 4) + NUM_CLASSES * 3e-11)
    for choice, expected in (("entropy", heatmap(prediction.entropy, 0.0, 1.0)),
                             ("variance", heatmap(prediction.uncertainty))):
        args = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "p.png"), "--out", str(tmp_path / choice)]
        assert main(args + (["--uncertainty", choice] if choice == "variance" else [])) == 0
        with Image.open(tmp_path / choice / "p_uncertainty.png") as written:
            # the same network on the same picture: at most one colour level apart (float rounding)
            assert np.abs(np.asarray(written).astype(int) - expected.astype(int)).max() <= 1, choice
    capsys.readouterr()
    # without a probability head there is no variance map: one clear line, exit 2
    state = torch.load(checkpoint, weights_only=False)
    state.pop("probability_head")
    headless = tmp_path / "headless.pt"
    save_checkpoint(headless, state)
    assert main(["predict", "--checkpoint", str(headless), str(tmp_path / "p.png"), "--out", str(tmp_path / "h"),
                 "--uncertainty", "variance"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "no probability head" in line and "--uncertainty entropy" in line
    assert main(["predict", "--checkpoint", str(headless), str(tmp_path / "p.png"), "--out", str(tmp_path / "h")]) == 0
    assert (tmp_path / "h" / "p_uncertainty.png").is_file()


# ----------------------------------------------------------------------------- globs


def _tree(root: Path) -> None:
    """root/a.png, root/b.jpg, root/sub/c.png, root/sub/deeper/d.png, root/.hidden/e.png, root/sub/f.txt."""
    for relative in ("a.png", "b.jpg", "sub/c.png", "sub/deeper/d.png", ".hidden/e.png", "sub/f.txt"):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.mark.parametrize("pattern", ["*.png", "**/*.png", "**/*.jpg", "sub/*", "s*/**/*.png", "**", "*/deeper/?.png",
                                     "[ab].*", ".hidden/*", "**/d*"])
def test_a_glob_names_what_python_glob_names(tmp_path: Path, pattern: str) -> None:
    """Without links, the walked glob gives the files Python's glob gives (a matched folder: the images below it)."""
    import glob

    from prcl.commands.predict import IMAGE_SUFFIXES, _glob_images, _image_files_below

    _tree(tmp_path / "root")
    expected = set()
    for match in glob.glob(str(tmp_path / "root" / pattern), recursive=True):
        path = Path(match)
        if path.is_dir():
            expected.update(_image_files_below(path))
        elif path.suffix in IMAGE_SUFFIXES:
            expected.add(path)
    found = _glob_images(str(tmp_path / "root" / pattern))
    assert len(found) == len(set(found))
    assert {p.resolve() for p in found} == {p.resolve() for p in expected}
    assert found  # every pattern here names some image


def test_a_glob_does_not_follow_a_link_loop(tmp_path: Path) -> None:
    """``root/**/*.png`` with root/sub/loop -> root: the real files, once (Python's glob never ends here);
    run in a process of its own, so a regression cannot hang the tests."""
    import json
    import os
    import subprocess
    import sys

    _tree(tmp_path / "root")
    os.symlink(tmp_path / "root", tmp_path / "root" / "sub" / "loop")
    script = ("import json, sys; from prcl.commands.predict import _inputs; "
              "print(json.dumps([str(p) for p in _inputs(sys.argv[1:])[0]]))")
    # run kills the process if it does not end in time (the loop made the old walk endless)
    process = subprocess.run([sys.executable, "-c", script, str(tmp_path / "root" / "**" / "*.png")],
                             capture_output=True, text=True, timeout=120)
    assert process.returncode == 0, process.stderr
    found = sorted(Path(p).relative_to(tmp_path / "root").as_posix() for p in json.loads(process.stdout))
    assert found == ["a.png", "sub/c.png", "sub/deeper/d.png"]


# ----------------------------------------------------------------------------- out of memory


OUT_OF_MEMORY = {
    "cpu": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                                "memory: you tried to allocate 40000000000 bytes. Error code 12"),
    "cuda": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 30.00 GiB"),
    "python": lambda: MemoryError(),
}


@pytest.mark.parametrize("kind", sorted(OUT_OF_MEMORY))
def test_an_image_that_does_not_fit_in_memory_is_named_and_the_others_written(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    rng = np.random.default_rng(7)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (72, 90, 3), dtype=np.uint8)).save(folder / "huge.png")
    for name in ("small1", "small2"):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    real = Predictor.predict_batch
    calls = []

    def limited(self, images):
        calls.append(len(images))
        if len(images) > 1 or images[0].shape[0] == 72:  # a batch of two, or the huge one, does not fit
            raise OUT_OF_MEMORY[kind]()
        return real(self, images)

    monkeypatch.setattr(Predictor, "predict_batch", limited)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(out), "--batch", "2"]) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    skipped = [line for line in captured.err.splitlines() if line.startswith("prcl: skipped")]
    assert len(skipped) == 1, captured.err
    assert "huge.png" in skipped[0] and "out of memory" in skipped[0] and "--protocol sliding" in skipped[0]
    assert captured.out.strip().splitlines()[-1].startswith("2 written, 1 failed")
    assert sorted(calls) == [1, 1, 1, 2]  # the batch of two small ones was retried one at a time
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["small1_mask.png", "small2_mask.png"]
    # with sliding windows already, the advice is a smaller window
    assert main(["predict", "--checkpoint", str(checkpoint), str(folder / "huge.png"), "--out", str(out),
                 "--protocol", "sliding", "--window", "32"]) == 1
    skipped = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prcl: skipped")]
    assert len(skipped) == 1 and "smaller --window" in skipped[0], skipped


def test_an_error_that_is_not_memory_is_not_hidden(
    checkpoint: Path, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(self, images):
        raise RuntimeError("Given groups=1, weight of size [64, 3, 7, 7], expected input to have 3 channels")

    monkeypatch.setattr(Predictor, "predict_batch", broken)
    with pytest.raises(RuntimeError, match="expected input"):
        main(["predict", "--checkpoint", str(checkpoint), str(photos / "sub"), "--out", str(tmp_path / "pred")])


# ----------------------------------------------------------------------------- EXIF orientation


def _turned_jpeg(path: Path) -> None:
    """A JPEG stored 80 wide x 48 high whose top rows are red, tagged EXIF orientation 6 (shown turned a
    quarter clockwise: 48 wide x 80 high, the red rows at the right)."""
    stored = np.full((48, 80, 3), 30, np.uint8)
    stored[:12] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(path, format="JPEG", quality=95, exif=exif)


def test_a_photo_is_read_as_viewers_show_it(checkpoint: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from prcl.data.datasets import FolderDataset, decode_image

    (tmp_path / "data" / "images").mkdir(parents=True)
    photo = tmp_path / "data" / "images" / "phone.jpg"
    _turned_jpeg(photo)
    with Image.open(photo) as stored:
        assert stored.size == (80, 48)  # PIL's (width, height) as stored
    picture = decode_image(photo)
    assert picture.shape == (80, 48, 3)  # (H, W) as shown
    red = (picture[..., 0].astype(int) - picture[..., 2]) > 150
    assert red[:, -6:].all() and not red[:, :30].any()  # the stored top rows are now the right columns
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(checkpoint), str(photo), "--out", str(out)]) == 0
    for kind in ("mask", "overlay", "uncertainty"):
        with Image.open(out / f"phone_{kind}.png") as written:
            assert written.size == (48, 80), kind
    with Image.open(photo) as pil:  # a PIL image given to the Predictor is turned too
        assert Predictor.from_checkpoint(checkpoint).predict(pil).mask.shape == (80, 48)
    # training data: a mask drawn on the picture as shown fits it
    (tmp_path / "data" / "masks").mkdir()
    Image.fromarray(np.zeros((80, 48), np.uint8), mode="L").save(tmp_path / "data" / "masks" / "phone.png")
    sample = FolderDataset(tmp_path / "data", ["phone"], num_classes=NUM_CLASSES)[0]
    assert tuple(sample["image"].shape) == (3, 80, 48) and tuple(sample["mask"].shape) == (80, 48)


def test_a_picture_over_pils_safety_limit_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image as PILImage

    from prcl.data.datasets import DataFileError, decode_image

    Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 2,240 pixels: over twice the limit, an error in PIL
    with pytest.raises(DataFileError) as info:
        decode_image(tmp_path / "big.png")
    message = str(info.value)
    assert len(message.splitlines()) == 1 and "big.png" in message and "MAX_IMAGE_PIXELS" in message
    assert "safety limit" in info.value.reason
