"""Evaluation: confusion matrix and mIoU, inference protocols, the evaluation loop."""

from __future__ import annotations

import json
import math
import os
import runpy
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prcl.engine.evaluate import evaluate, evaluate_model
from prcl.infer.protocols import average_views, crop_for_protocol, dense_maps
from prcl.metrics import ConfusionMatrix

from tolerances import assert_within, probability_bound, probability_sum_bound, summation_bound

NUM_CLASSES = 4


def predict_probabilities(model, image: torch.Tensor, num_classes: int, *views, **options) -> torch.Tensor:
    """The evaluation path's probabilities: the model's dense maps averaged over the views."""
    return average_views(dense_maps(model, num_classes), image, *views, **options)


def _eval_config(num_classes: int, protocol: str = "whole", window=None, stride=None, flip=False, scales=(1.0,)):
    """The fields of a prcl Config that evaluate_model reads."""
    return SimpleNamespace(
        data=SimpleNamespace(num_classes=num_classes, num_workers=0),
        eval=SimpleNamespace(protocol=protocol, window=window, stride=stride, flip=flip, scales=list(scales)),
    )


def _hand_example() -> ConfusionMatrix:
    """3 labeled classes of 4 (class 3 never occurs; class 2 only predicted), one ignored pixel.

    target: 0 0 1 1 | 1 -1 0 0      pred: 0 1 1 1 | 2 3 0 0
    pairs (target, pred): (0,0) x3, (0,1) x1, (1,1) x2, (1,2) x1; the (-1, 3) pixel is ignored.
    """
    confusion = ConfusionMatrix(NUM_CLASSES)
    target = torch.tensor([[[0, 0, 1, 1], [1, -1, 0, 0]]])
    pred = torch.tensor([[[0, 1, 1, 1], [2, 3, 0, 0]]])
    confusion.update(pred, target)
    return confusion


def test_confusion_matrix_counts_and_ignores() -> None:
    confusion = _hand_example()
    expected = torch.zeros(4, 4, dtype=torch.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[1, 2] = 3, 1, 2, 1
    assert torch.equal(confusion.matrix, expected)


def test_iou_and_both_averages_by_hand() -> None:
    confusion = _hand_example()
    iou = confusion.iou()
    # class 0: 3 / (4 + 3 - 3) = 3/4; class 1: 2 / (3 + 3 - 2) = 1/2; class 2: 0 / 1; class 3: absent.
    assert iou[:3].tolist() == pytest.approx([0.75, 0.5, 0.0])
    assert math.isnan(iou[3])
    assert confusion.miou() == pytest.approx((0.75 + 0.5) / 2)  # classes in the ground truth: 0, 1
    assert math.isnan(confusion.miou(average="all"))  # class 3 absent -> NaN, as in the release
    assert confusion.pixel_accuracy() == pytest.approx(5 / 7)


def test_miou_all_classes_when_every_class_occurs() -> None:
    confusion = ConfusionMatrix(2)
    confusion.update(torch.tensor([[0, 1, 1]]), torch.tensor([[0, 0, 1]]))
    # class 0: 1 / (2 + 1 - 1) = 1/2; class 1: 1 / (1 + 2 - 1) = 1/2
    assert confusion.miou(average="all") == pytest.approx(0.5)
    assert confusion.miou() == pytest.approx(0.5)


def test_confusion_matrix_rejects_labels_out_of_range() -> None:
    with pytest.raises(ValueError, match="out of range"):
        ConfusionMatrix(3).update(torch.tensor([[0]]), torch.tensor([[3]]))


def test_all_reduce_is_a_no_op_without_process_group() -> None:
    confusion = _hand_example()
    before = confusion.matrix.clone()
    confusion.all_reduce()
    assert torch.equal(confusion.matrix, before)


def _conv_model(num_classes: int = NUM_CLASSES, seed: int = 0) -> nn.Conv2d:
    torch.manual_seed(seed)
    return nn.Conv2d(3, num_classes, 1)


def _conv_rounding(conv: nn.Conv2d, image: torch.Tensor, terms: int = 4) -> float:
    """How far two float32 computations of the 1 x 1 convolution's logits may differ: each sums 3 products and
    the bias (``terms`` roundings, more where the input was averaged first) of magnitudes |w| |x| + |b|."""
    magnitude = F.conv2d(image.abs(), conv.weight.abs(), conv.bias.abs()).max()
    return 2 * float(summation_bound(magnitude, terms))


@torch.no_grad()
@pytest.mark.parametrize("size", [(37, 53), (20, 24)])  # larger than and smaller than the window
def test_sliding_window_equals_whole_image_for_translation_equivariant_model(size: tuple[int, int]) -> None:
    model = _conv_model()
    image = torch.randn(2, 3, *size)
    whole = predict_probabilities(model, image, NUM_CLASSES, "whole")
    sliding = predict_probabilities(model, image, NUM_CLASSES, "sliding", window=(24, 32), stride=(11, 13))
    assert sliding.shape == (2, NUM_CLASSES, *size)
    # each pixel's logits are the same 1 x 1 convolution, which oneDNN may block otherwise in a window; then up to
    # 3 x 3 windows averaged: the logits' rounding through the softmax, plus the average's (10 roundings, values <= 1)
    assert_within(sliding, whole, probability_bound(_conv_rounding(model, image)) + summation_bound(1.0, 10))
    # a softmax: the probabilities sum to 1 up to the float32 rounding of their steps
    assert_within(whole.sum(1), torch.ones(2, *size), probability_sum_bound(NUM_CLASSES))


@torch.no_grad()
def test_sliding_window_averages_overlaps_with_count_map() -> None:
    # map = 1 everywhere in each window: the average must be exactly 1 whatever the overlap count.
    image = torch.zeros(1, 3, 30, 41)
    out = average_views(lambda x: torch.ones(x.shape[0], 1, *x.shape[-2:]), image, "sliding", 16, 5)
    assert torch.equal(out, torch.ones(1, 1, 30, 41))  # k ones sum to k exactly in float32, and k / k = 1
    # map = each window's left offset (read from an x-coordinate image): windows start at 0, 2, 4,
    # so columns 0-1 see {0}, 2-3 {0, 2}, 4-5 {2, 4}, 6-7 {4}; a pixel gets its windows' mean.
    columns = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 3, 4, 8)
    left = average_views(lambda x: x[:, :1, :, :1].expand(-1, -1, *x.shape[-2:]), columns, "sliding", 4, 2)
    assert left[0, 0, 0].tolist() == [0, 0, 1, 1, 3, 3, 4, 4]


@torch.no_grad()
def test_flip_averages_the_flipped_view() -> None:
    conv = _conv_model()

    def position_dependent(x: torch.Tensor) -> torch.Tensor:  # not flip-equivariant
        ramp = torch.linspace(0, 3, x.shape[-1]).view(1, 1, 1, -1)
        return conv(x) + ramp * torch.arange(NUM_CLASSES).view(1, -1, 1, 1)

    image = torch.randn(1, 3, 12, 16)
    got = predict_probabilities(position_dependent, image, NUM_CLASSES, flip=True)
    plain = position_dependent(image).softmax(1)
    mirrored = position_dependent(image.flip(-1)).softmax(1).flip(-1)
    # the same two maps, resized to their own size (weights 1 and 0) and averaged: a few eps of values <= 1
    assert_within(got, (plain + mirrored) / 2, summation_bound(1.0, 4 + 2))
    assert (got - plain).abs().max() > 0.1  # the ramp makes the mirrored view's probabilities differ by tenths
    # For a flip-equivariant model flipping changes nothing: the same 1 x 1 convolution of mirrored pixels (perhaps
    # blocked otherwise), through the softmax, then two views averaged
    assert_within(predict_probabilities(conv, image, NUM_CLASSES, flip=True),
                  predict_probabilities(conv, image, NUM_CLASSES),
                  probability_bound(_conv_rounding(conv, image)) + summation_bound(1.0, 4 + 3))


@torch.no_grad()
def test_low_resolution_logits_are_upsampled_and_scales_averaged() -> None:
    conv = _conv_model()

    def strided(x: torch.Tensor) -> torch.Tensor:  # stride-4 logits, as the segmenter's
        return conv(F.avg_pool2d(x, 4, ceil_mode=True))

    image = torch.randn(1, 3, 50, 70)
    single = predict_probabilities(strided, image, NUM_CLASSES)
    multi = predict_probabilities(strided, image, NUM_CLASSES, scales=(0.75, 1.0, 1.5))
    assert single.shape == multi.shape == (1, NUM_CLASSES, 50, 70)
    # three scales of a softmax averaged: the probabilities sum to 1 up to the float32 rounding of their steps
    assert_within(multi.sum(1), torch.ones(1, 50, 70), probability_sum_bound(NUM_CLASSES, views=3))
    # A constant image gives the same probabilities at every scale, up to the rounding of the images' resize and
    # 4 x 4 pooling (20 more roundings in the logits) and of the resize and average of the two scales' maps
    flat = torch.ones(1, 3, 50, 70) * 0.3
    multi_scale_flat = predict_probabilities(strided, flat, NUM_CLASSES, scales=(0.5, 1.0))
    assert_within(multi_scale_flat, predict_probabilities(strided, flat, NUM_CLASSES),
                  probability_bound(_conv_rounding(conv, flat, terms=4 + 20)) + summation_bound(1.0, 4 + 3))


def test_dense_maps_check_class_count_and_views_check_protocol() -> None:
    with pytest.raises(ValueError, match="expected 5"):
        predict_probabilities(_conv_model(), torch.randn(1, 3, 8, 8), 5)
    with pytest.raises(ValueError, match="crop_for_protocol"):
        predict_probabilities(_conv_model(), torch.randn(1, 3, 8, 8), NUM_CLASSES, "center", window=4)


def test_center_crop_cuts_image_and_label_alike() -> None:
    # Encode each pixel's position so image and label crops can be compared.
    position = torch.arange(20 * 30).view(1, 20, 30)
    image = position[:, None].expand(1, 3, 20, 30).float()
    cropped_image, cropped_label = crop_for_protocol(image, position, "center", window=(10, 16))
    assert cropped_image.shape == (1, 3, 10, 16) and cropped_label.shape == (1, 10, 16)
    assert torch.equal(cropped_image[:, 0].long(), cropped_label)
    assert cropped_label[0, 0, 0] == 5 * 30 + 7  # top = (20 - 10) // 2, left = (30 - 16) // 2
    # A side smaller than the window is kept whole.
    small_image, small_label = crop_for_protocol(image, position, "center", window=25)
    assert small_image.shape[-2:] == (20, 25) and small_label.shape == (1, 20, 25)
    # Whole/sliding leave the pair alone.
    same_image, same_label = crop_for_protocol(image, position, "whole", window=8)
    assert same_image is image and same_label is position


def test_random_crop_is_seeded_and_consistent() -> None:
    position = torch.arange(40 * 40).view(1, 40, 40)
    image = position[:, None].expand(1, 3, 40, 40).float()

    def crop(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        return crop_for_protocol(image, position, "random-crop", 16, torch.Generator().manual_seed(seed))

    first_image, first_label = crop(1)
    assert torch.equal(first_image[:, 0].long(), first_label)
    assert torch.equal(crop(1)[1], first_label)
    assert any(not torch.equal(crop(seed)[1], first_label) for seed in range(2, 6))


class _PerfectModel(nn.Module):
    """Logits that reproduce the label stored in the image's first channel (eval-mode aware)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return F.one_hot(x[:, 0].long(), self.num_classes).permute(0, 3, 1, 2).float() * 10


@pytest.mark.parametrize("protocol", ["whole", "sliding", "center", "random-crop"])
def test_evaluate_model_perfect_model_scores_one(protocol: str) -> None:
    torch.manual_seed(0)
    labels = [torch.randint(0, 3, (18, 22)), torch.randint(0, 3, (25, 17))]
    labels[0][0, :5] = -1
    dataset = [{"image": label[None].expand(3, *label.shape).clamp(min=0).float(), "mask": label} for label in labels]
    model = _PerfectModel(NUM_CLASSES)
    model.train()
    cfg = _eval_config(NUM_CLASSES, protocol, window=12, stride=8, flip=True)
    result = evaluate_model(model, dataset, cfg, "cpu")
    assert result["miou"] == pytest.approx(1.0)
    assert result["pixel_accuracy"] == pytest.approx(1.0)
    assert result["per_class_iou"][:3] == pytest.approx([1.0, 1.0, 1.0])
    assert result["per_class_iou"][3] is None  # class 3 never occurs
    assert result["miou_all_classes"] is None
    assert result["protocol"] == protocol and result["images"] == 2
    assert result["flip"] is True and result["scales"] == [1.0]
    assert model.modes and not any(model.modes) and not model.training  # scored (and left) in eval mode


def test_evaluate_accepts_dict_batches_and_counts_errors() -> None:
    label = torch.tensor([[[0, 1], [1, 1]]])
    wrong = {"image": torch.zeros(1, 3, 2, 2), "mask": label, "id": ["a"]}  # predicts class 0 everywhere
    result = evaluate(_PerfectModel(2), [wrong], 2, "cpu")
    assert result["pixel_accuracy"] == pytest.approx(0.25)
    # class 0: 1 / (1 + 4 - 1) = 1/4; class 1: 0 / 3
    assert result["per_class_iou"] == pytest.approx([0.25, 0.0])
    assert result["miou"] == pytest.approx(0.125) and result["miou_all_classes"] == pytest.approx(0.125)


# --------------------------------------------------------------------------------------------
# distributed evaluation: 2 gloo processes on CPU
# --------------------------------------------------------------------------------------------

_WORKER = '''
import json, os, sys

import torch
from torch import nn
from types import SimpleNamespace

from prcl.engine.evaluate import evaluate_model

NUM_IMAGES, NUM_CLASSES = 7, 3  # an odd count: the ranks score 4 and 3 images
PROTOCOLS = {"whole": None, "random-crop": 6}


class Images:
    """7 deterministic (image, mask) items; records which indices it served."""

    def __init__(self):
        generator = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(NUM_IMAGES):
            mask = torch.randint(0, NUM_CLASSES, (10, 12), generator=generator)
            mask[0, :3] = -1
            self.items.append({"image": torch.randn(3, 10, 12, generator=generator), "mask": mask})
        self.served = []

    def __len__(self):
        return NUM_IMAGES

    def __getitem__(self, index):
        self.served.append(int(index))
        return self.items[index]


class CountingConv(nn.Conv2d):
    calls = 0

    def forward(self, x):
        self.calls += x.shape[0]
        return super().forward(x)


def build():
    torch.manual_seed(0)
    return CountingConv(3, NUM_CLASSES, 1), Images()


def config(protocol):
    return SimpleNamespace(
        data=SimpleNamespace(num_classes=NUM_CLASSES, num_workers=0),
        eval=SimpleNamespace(protocol=protocol, window=PROTOCOLS[protocol], stride=None, flip=False, scales=[1.0]),
    )


def run():
    """Each protocol's result, and the indices served / model calls of the 'whole' pass."""
    model, dataset = build()
    results, seen = {}, {}
    for protocol in PROTOCOLS:
        dataset.served.clear()
        model.calls = 0
        results[protocol] = evaluate_model(model, dataset, config(protocol), "cpu")
        seen[protocol] = {"indices": list(dataset.served), "calls": model.calls}
    return results, seen


if __name__ == "__main__":
    import torch.distributed as dist

    dist.init_process_group("gloo")
    results, seen = run()
    with open(sys.argv[1], "w") as handle:
        json.dump({"rank": dist.get_rank(), "results": results, "seen": seen}, handle)
    dist.destroy_process_group()
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_distributed_evaluation_scores_each_image_once(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(_WORKER))
    port, world = _free_port(), 2
    started = time.perf_counter()
    processes = []
    for rank in range(world):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE=str(world), LOCAL_RANK=str(rank), OMP_NUM_THREADS="1")
        processes.append(subprocess.Popen([sys.executable, str(worker), str(tmp_path / f"rank{rank}.json")],
                                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [process.communicate(timeout=60)[0] for process in processes]
    finally:
        for process in processes:
            process.kill()
    assert [process.returncode for process in processes] == [0, 0], "\n".join(outputs)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(world)]
    print(f"2-process evaluation: {time.perf_counter() - started:.1f} s")

    # Each rank scores its rank-strided share, once: together every index exactly once.
    served = [r["seen"]["whole"]["indices"] for r in ranks]
    assert served == [[0, 2, 4, 6], [1, 3, 5]]
    assert [r["seen"]["whole"]["calls"] for r in ranks] == [4, 3]

    single_results, single_seen = runpy.run_path(str(worker), run_name="worker")["run"]()  # no process group
    assert single_seen["whole"] == {"indices": list(range(7)), "calls": 7}
    for protocol, single in single_results.items():
        assert single["images"] == 7
        for r in ranks:  # every rank returns the single-process result (random crops are per image)
            assert r["results"][protocol] == single
    assert 0 < single_results["whole"]["miou"] < 1
    assert single_results["random-crop"]["pixel_accuracy"] != single_results["whole"]["pixel_accuracy"]
