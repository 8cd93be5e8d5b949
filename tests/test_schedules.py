"""The release's schedules: epoch length, per-epoch staircases of lr and lambda, paper-row configs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from prcl.config import load_config
from prcl.schedules import (
    contrast_weight,
    due,
    poly_lr,
    ramp_weight,
    release_epoch_iterations,
    schedule_progress,
)
from prcl.errors import UserError

from tolerances import EPS64

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASETS_DOC = Path(__file__).resolve().parents[1] / "docs" / "datasets.md"


@pytest.mark.parametrize("num_labels, global_batch, expected", [
    (662, 16, 84),     # L = 42 batches, int(2000 / 16 / 42) = 2 passes
    (1323, 16, 83),    # L = 83, 1 pass
    (2646, 16, 166),   # the formula gives 0 passes; ours: one pass over the labels
    (5291, 16, 331),
    (150, 48, 40),     # Cityscapes 150 on 8 GPUs x 6: L = 4, 10 passes
])
def test_release_epoch_length_on_eight_gpus(num_labels, global_batch, expected):
    assert release_epoch_iterations(num_labels, global_batch) == expected


@pytest.mark.parametrize("num_labels", [92, 150, 183, 366, 662, 732, 1323, 1464, 2646])
def test_epoch_length_depends_on_the_global_batch_only(num_labels):
    """The release's per-rank formula, int(2000 / b / w / ceil(ceil(N / w) / b)), for 8 x 2, 4 x 4, 2 x 8, 1 x 16."""
    lengths = set()
    for world, batch in ((8, 2), (4, 4), (2, 8), (1, 16)):
        per_rank_batches = -(-(-(-num_labels // world)) // batch)
        passes = int(2000 / batch / world / per_rank_batches)
        lengths.add(max(passes, 1) * per_rank_batches)
        assert release_epoch_iterations(num_labels, world * batch) == max(passes, 1) * per_rank_batches
    assert len(lengths) == 1


def _voc_662(world_size=8, *overrides):
    cfg = load_config(CONFIGS / "voc_blended.yaml", list(overrides), resolve=False)
    from prcl.config import resolve_config
    return resolve_config(cfg, world_size=world_size)


def test_voc_662_schedule_is_200_epochs_of_84_with_per_epoch_staircases():
    cfg = _voc_662()
    assert (cfg.train.epoch_iterations, cfg.train.epochs, cfg.train.iterations) == (84, 200, 16_800)
    base = cfg.optim.lr
    lrs = [poly_lr(base, schedule_progress(step, cfg), cfg.optim.poly_power, cfg.optim.min_lr)
           for step in range(cfg.train.iterations)]
    weights = [contrast_weight(step, cfg) for step in range(cfg.train.iterations)]
    for epoch in (0, 1, 50, 100, 150, 199):
        first, last = epoch * 84, epoch * 84 + 83
        # the formula in float64 in another order (progress epoch / 200 from step counts): a few roundings apart
        assert lrs[first] == lrs[last] == pytest.approx(max(base * (1 - epoch / 200) ** 0.9, 1e-6), rel=8 * EPS64)
        assert weights[first] == weights[last]
    assert lrs[84] < lrs[83]  # steps once per epoch
    expected_lambda = {0: 1.0, 50: 0.7316, 100: 0.2865, 150: 0.0601, 199: 0.0071}
    for epoch, value in expected_lambda.items():
        assert weights[epoch * 84] == pytest.approx(value, abs=5e-5)  # printed to 4 decimals: half the last digit
    assert len(set(lrs)) == 200 and len(set(weights)) == 200


def test_keeping_the_global_batch_on_fewer_gpus_keeps_the_schedule():
    eight = _voc_662(8)
    two = _voc_662(2, "data.batch_size=8", "data.unlabeled_batch_size=8")
    assert (two.train.epoch_iterations, two.train.iterations) == (eight.train.epoch_iterations, eight.train.iterations)


def _documented_accumulation_rows() -> list[tuple[int, str, str]]:
    """(GPUs, VOC overrides, Cityscapes overrides) of the accumulation table under "Fewer GPUs" in docs/datasets.md."""
    pattern = re.compile(r"^\|\s*(\d)\s*\|\s*`([^`]*train\.accumulate=[^`]*)`\s*\|\s*`([^`]*)`\s*\|")
    return [(int(m.group(1)), m.group(2), m.group(3))
            for m in map(pattern.match, DATASETS_DOC.read_text(encoding="utf-8").splitlines()) if m]


def test_the_documented_accumulation_settings_keep_the_global_batch_and_the_schedule():
    from prcl.config import resolve_config

    rows = _documented_accumulation_rows()
    assert sorted(gpus for gpus, _, _ in rows) == [1, 2, 4]
    for gpus, voc, cityscapes in rows:
        for name, labels, global_batch, settings in (("voc_blended.yaml", 662, 16, voc),
                                                     ("cityscapes.yaml", 744, 48, cityscapes)):
            eight = resolve_config(load_config(CONFIGS / name, [f"data.num_labels={labels}"], resolve=False), 8)
            cfg = resolve_config(load_config(CONFIGS / name, [f"data.num_labels={labels}", *settings.split()],
                                             resolve=False), gpus)
            data, train = cfg.data, cfg.train
            assert data.batch_size * gpus * train.accumulate == global_batch == data.batch_size * 8, (name, gpus)
            assert data.unlabeled_batch_size * gpus * train.accumulate == global_batch, (name, gpus)
            assert (train.epoch_iterations, train.iterations) == (eight.train.epoch_iterations,
                                                                 eight.train.iterations), (name, gpus)


def test_accumulation_counts_in_the_global_batch_of_the_epoch_formula():
    """1 process x 2 x 8 micro-batches is the global batch of 16 (84 iterations per epoch for VOC 662), not 2."""
    accumulated = _voc_662(1, "train.accumulate=8")
    assert accumulated.train.epoch_iterations == _voc_662(8).train.epoch_iterations == 84
    assert _voc_662(1).train.epoch_iterations != 84  # without it, a global batch of 2: another epoch


def test_iterations_stop_a_paper_schedule_early_without_changing_it():
    full = _voc_662()
    early = _voc_662(8, "train.iterations=100")
    assert early.train.iterations == 100
    for step in (0, 83, 84, 99):
        assert schedule_progress(step, early) == schedule_progress(step, full)
        assert contrast_weight(step, early) == contrast_weight(step, full)
    with pytest.raises(UserError, match="past the end of the schedule"):
        _voc_662(8, "train.iterations=20000")


def test_epochs_without_an_epoch_length_is_an_error():
    with pytest.raises(UserError, match="train.epochs needs an epoch length"):
        load_config(None, ["train.epochs=10"])
    with pytest.raises(UserError, match="train.iterations is null"):
        load_config(None, ["train.iterations=null"])


def test_continuous_schedule_without_epoch_length():
    cfg = load_config(None, ["train.iterations=1000"])
    assert schedule_progress(500, cfg) == 0.5
    # epoch 100 of the 200-epoch ramp; the value printed to 4 decimals: half the last digit
    assert contrast_weight(500, cfg) == pytest.approx(0.2865, abs=5e-5)


def test_ramp_values_from_method():
    expected = {0: 1.0, 50: 0.7316, 100: 0.2865, 150: 0.0601, 199: 0.0071}
    for epoch, value in expected.items():
        assert ramp_weight(epoch) == pytest.approx(value, abs=5e-5)  # printed to 4 decimals: half the last digit
    assert ramp_weight(400) == pytest.approx(ramp_weight(200), rel=8 * EPS64)  # the end value, up to float64 rounding
    assert ramp_weight(10, begin_epoch=20) == 1.0


def _documented_rows() -> list[tuple[str, int, int, int]]:
    """(config, labels, iterations per epoch, iterations) from the table in docs/datasets.md."""
    rows = []
    pattern = re.compile(r"^\|\s*`(\w+\.yaml)`\s*\|\s*(\d+)\s*\|\s*([\d,]+)\s*\|\s*([\d,]+)\s*\|")
    for line in DATASETS_DOC.read_text(encoding="utf-8").splitlines():
        match = pattern.match(line)
        if match:
            name, labels, per_epoch, total = match.groups()
            rows.append((name, int(labels), int(per_epoch.replace(",", "")), int(total.replace(",", ""))))
    return rows


def test_every_paper_row_is_documented_and_resolves_to_its_documented_schedule():
    from prcl.config import resolve_config

    rows = _documented_rows()
    documented = {(name, labels) for name, labels, _, _ in rows}
    expected = {("voc_blended.yaml", n) for n in (662, 1323, 2646, 5291)}
    expected |= {("voc_classic.yaml", n) for n in (92, 183, 366, 732, 1464)}
    expected |= {("cityscapes.yaml", n) for n in (186, 372, 744, 1488)} | {("cityscapes_150.yaml", 150)}
    assert documented == expected
    for name, labels, per_epoch, total in rows:
        cfg = resolve_config(load_config(CONFIGS / name, [f"data.num_labels={labels}"], resolve=False), world_size=8)
        assert (cfg.train.epoch_iterations, cfg.train.iterations) == (per_epoch, total), name
        assert str(labels) in cfg.train.out_dir


def test_the_schedule_line_a_run_prints():
    from prcl.schedules import describe_schedule

    line = describe_schedule(_voc_662(8, "train.iterations=100"), world_size=8)
    assert "200 epochs x 84 iterations = 16800" in line and "8 processes x 2" in line
    assert "stopping early at iteration 100" in line
    assert "stopping early" not in describe_schedule(_voc_662(), world_size=8)
    line = describe_schedule(_voc_662(1, "train.accumulate=8"), world_size=1)
    assert "global batch 16 labeled (1 process x 2 x 8 micro-batches)" in line


@pytest.mark.parametrize("name, crop, scales, strong, batch, protocol", [
    ("voc_blended.yaml", 321, [0.5, 1.5], [0.5, 1.5], 2, "whole"),
    ("voc_classic.yaml", 321, [0.5, 1.5], [0.5, 1.5], 2, "whole"),
    ("cityscapes.yaml", 512, [1.0, 1.0], [0.5, 2.0], 6, "sliding"),
    ("cityscapes_150.yaml", 512, [1.0, 1.0], [0.5, 2.0], 6, "sliding"),
])
def test_paper_configs_hold_the_release_recipe(name, crop, scales, strong, batch, protocol):
    cfg = load_config(CONFIGS / name)
    assert (cfg.data.crop_size, cfg.data.scale_range, cfg.method.strong_scale_range) == (crop, scales, strong)
    assert (cfg.data.batch_size, cfg.data.unlabeled_batch_size, cfg.eval.protocol) == (batch, batch, protocol)
    assert (cfg.model.encoder, cfg.model.output_stride, cfg.method.name) == ("resnet101", 16, "prcl")
    assert (cfg.method.student_passes, cfg.method.ema_alpha) == ("separate", 0.99)
    assert (cfg.optim.lr, cfg.optim.uncer_lr, cfg.prcl.temperature) == (3.2e-3, 5e-5, 100.0)
    assert (cfg.prcl.num_queries, cfg.prcl.num_negatives, cfg.prcl.max_epoch) == (256, 512, 200)
    assert (cfg.train.epochs, cfg.train.epoch_images) == (200, 2000)


def test_periodic_steps_are_the_multiples_and_the_last():
    # one rule for logs, checkpoints and evaluations: multiples of `every` (0: none) and the last step
    assert [step for step in range(1, 11) if due(step, 4, 10)] == [4, 8, 10]
    assert [step for step in range(1, 11) if due(step, 5, 10)] == [5, 10]
    assert [step for step in range(1, 11) if due(step, 0, 10)] == [10]
    assert [step for step in range(1, 4) if due(step, 1, 3)] == [1, 2, 3]
