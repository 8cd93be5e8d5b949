"""`prcl demo` end to end at a tiny size: one run per registered method, differing only in method.name; one report."""

from __future__ import annotations

import json

import pytest
import yaml
from PIL import Image

from prcl.demo import run_demo
from prcl.methods import METHODS

from tolerances import EPS64

pytestmark = pytest.mark.slow  # every test here trains or runs the demo


def test_demo_trains_every_registered_method_and_reports_them(tmp_path, capsys):
    overrides = [f"data.root={tmp_path / 'data'}", "data.demo.image_size=64", "data.crop_size=64",
                 "data.demo.num_train=24", "data.demo.num_valid=4", "data.demo.num_test=4", "data.num_workers=0",
                 "prcl.num_queries=8", "prcl.num_negatives=16", "prcl.kernel=chunked",
                 "train.iterations=2", "train.eval_every=0", "train.progress=false"]
    report = run_demo(tmp_path / "demo", overrides=overrides, seed=3)
    printed = capsys.readouterr().out
    # where the demo is, before each run; from the second run on with an estimate of the time left
    names = list(METHODS)
    assert f"demo: run 1 of {len(names)} ({names[0]}, step 0), remaining time: known after the first steps" in printed
    for index, method in enumerate(names[1:], start=2):
        assert f"demo: run {index} of {len(names)} ({method}, step 0), about " in printed
    assert sorted(p.name for p in (tmp_path / "demo").iterdir() if p.is_dir()) == sorted(METHODS)
    written = json.loads((tmp_path / "demo/report.json").read_text())
    for method in METHODS:
        assert 0 <= written[f"{method}_miou"] <= 100 and method in written["valid_miou"]
    # 100 (a - b) against 100 a - 100 b: a few float64 roundings of numbers up to 100
    assert written["gain_over_mean_teacher"] == pytest.approx(report["prcl_miou"] - report["mean_teacher_miou"],
                                                              abs=4 * EPS64 * 100)
    configs = {m: yaml.safe_load((tmp_path / "demo" / m / "config.yaml").read_text()) for m in METHODS}
    for method in METHODS:  # only the method and its folder differ
        for section, values in configs[method].items():
            for key, value in values.items():
                if (section, key) not in (("method", "name"), ("train", "out_dir")):
                    assert value == configs["prcl"][section][key], (method, section, key)
    measures = written["prcl_uncertainty"]  # the PRCL run's error-finding AUROCs on the reported split
    assert "auroc_variance" in measures and "auroc_entropy" in measures and 0 <= measures["ece"] <= 1
    figure = Image.open(written["figure"])
    assert figure.width == (3 + len(METHODS)) * 64 * 2  # image, label, a prediction per method, uncertainty
