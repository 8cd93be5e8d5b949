"""The demo's remaining-time estimate (prcl.demo.RemainingTime), with a fake clock and fake trainers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from prcl.demo import ESTIMATE_EVERY, STEP_COST, RemainingTime

RUNS = [("supervised", 100), ("mean_teacher", 100), ("prcl", 100)]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_estimate_weights_the_steps_left_by_their_method_cost():
    clock = Clock()
    remaining = RemainingTime(RUNS, clock=clock)
    remaining.start("supervised", 0)
    assert remaining.seconds_left() is None and "known after the first steps" in remaining.line()
    clock.now += 10.0
    remaining(SimpleNamespace(step=50))
    done = STEP_COST["supervised"] * 50  # weighted steps in 10 s
    left = STEP_COST["supervised"] * 50 + STEP_COST["mean_teacher"] * 100 + STEP_COST["prcl"] * 100
    assert remaining.seconds_left() == pytest.approx(left * 10.0 / done, rel=1e-12)
    # the next run: the first run's steps all done, its time kept in the speed
    clock.now += 10.0
    remaining(SimpleNamespace(step=100))
    remaining.start("mean_teacher", 0)
    left = STEP_COST["mean_teacher"] * 100 + STEP_COST["prcl"] * 100
    assert remaining.seconds_left() == pytest.approx(left * 20.0 / (STEP_COST["supervised"] * 100), rel=1e-12)
    assert remaining.line().startswith("demo: run 2 of 3 (mean_teacher, step 0), about ")


def test_a_resumed_run_counts_only_its_steps_left_and_the_steps_taken_now():
    clock = Clock()
    remaining = RemainingTime(RUNS, clock=clock)
    remaining.start("supervised", 100)  # finished before: nothing left, nothing done in this invocation
    remaining.start("mean_teacher", 60)
    assert remaining.seconds_left() is None
    clock.now += 8.0
    remaining(SimpleNamespace(step=80))
    left = STEP_COST["mean_teacher"] * 20 + STEP_COST["prcl"] * 100
    assert remaining.seconds_left() == pytest.approx(left * 8.0 / (STEP_COST["mean_teacher"] * 20), rel=1e-12)


def test_a_line_every_estimate_every_steps_and_none_at_the_last(capsys):
    remaining = RemainingTime([("prcl", 2 * ESTIMATE_EVERY)], clock=Clock())
    remaining.start("prcl", 0)
    for step in range(1, 2 * ESTIMATE_EVERY + 1):
        remaining(SimpleNamespace(step=step))
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"demo: run 1 of 1 (prcl, step {ESTIMATE_EVERY}), about 0.0 min left (from the speed so far)"]
