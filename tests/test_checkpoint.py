"""Checkpoints: round trip, atomic writes, clear errors, RNG state."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from prcl import checkpoint as checkpoint_module
from prcl.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from prcl.errors import UserError


def _state() -> dict:
    return {
        "student": {"weight": torch.randn(3, 4), "bias": torch.zeros(3)},
        "probability_head": None,
        "iteration": 7,
        "best_miou": 0.5,
        "history": [1, 2.5, "three", None],
        "name": "prcl",
    }


def test_round_trip_creates_folder(tmp_path: Path) -> None:
    state = _state()
    path = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["student"]["weight"], state["student"]["weight"])
    assert {k: v for k, v in loaded.items() if k != "student"} == {k: v for k, v in state.items() if k != "student"}
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_failed_write_keeps_old_file_and_leaves_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"iteration": 1})
    original_save = torch.save

    def broken_save(obj: object, stream: object) -> None:
        original_save({"iteration": 2, "padding": torch.zeros(1000)}, stream)  # part written ...
        raise OSError("disk full")  # ... then the write fails

    monkeypatch.setattr(checkpoint_module.torch, "save", broken_save)
    with pytest.raises(UserError, match="cannot write .*last.pt: the write failed .disk full."):
        save_checkpoint(path, {"iteration": 2})
    monkeypatch.undo()
    assert load_checkpoint(path) == {"iteration": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found.*nothing.pt"):
        load_checkpoint(tmp_path / "nothing.pt")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_file_is_a_user_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint(path, _state())
    data = path.read_bytes()
    content = {"truncate": data[: len(data) // 2], "garbage": b"not a checkpoint at all", "empty": b""}[damage]
    path.write_bytes(content)
    with pytest.raises(UserError, match="last.pt is not a prcl checkpoint or is damaged"):
        load_checkpoint(path)


def test_non_dict_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), path)
    with pytest.raises(UserError, match="not a prcl checkpoint"):
        load_checkpoint(path)


def _draw() -> tuple:
    return (
        [random.random() for _ in range(3)],
        random.gauss(0, 1),
        np.random.rand(3).tolist(),
        np.random.randn(),  # exercises numpy's cached gaussian
        torch.rand(3).tolist(),
    )


def test_rng_state_survives_a_checkpoint_round_trip(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leave a cached gaussian in Python's state
    np.random.randn()
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {"rng": capture_rng_state()})
    expected = _draw()
    _draw()  # move every generator on
    restore_rng_state(load_checkpoint(path)["rng"])
    assert _draw() == expected
