"""model.weights=imagenet: fetched once into torch's or timm's cache, its hash checked, offline errors in
one line, under torchrun downloaded by one process. Never on the network: torchvision's URL is replaced by
a file:// URL of a file made here, and the Hugging Face hub runs in offline mode on a cache made here."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
import torchvision

from prcl.cli import main
from prcl.engine.trainer import Trainer
from prcl.errors import UserError
from prcl.models import build_encoder, efficientnet_lite0_weights_path, fetch_weights, imagenet
from tiny_run import tiny_config, tiny_overrides

TIMM_ENCODER = "mobilenetv3_small_050"  # small, and timm publishes its weights on the Hugging Face hub


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Every cache in tmp_path, the Hugging Face hub offline, and torchvision's URL one that cannot be
    reached: a test that forgot to name its own URL fails instead of downloading."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(imagenet, "torchvision_url", lambda encoder: (tmp_path / "nowhere" / "x-0.pth").as_uri())


def _publish(folder: Path, state: dict[str, torch.Tensor], name: str = "resnet18", fake_hash: str = "") -> Path:
    """``state`` saved as <folder>/<name>-<first 8 hex digits of its SHA-256>.pth, as torchvision names files
    (``fake_hash``: that hash in the name instead)."""
    folder.mkdir(parents=True, exist_ok=True)
    draft = folder / "draft.pth"
    torch.save(state, draft)
    digest = fake_hash or hashlib.sha256(draft.read_bytes()).hexdigest()[:8]
    return draft.rename(folder / f"{name}-{digest}.pth")


@pytest.fixture
def resnet18_state():
    torch.manual_seed(3)
    model = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)  # not what an initialisation draws: equality means loaded
    return model.state_dict()


@pytest.fixture
def published(tmp_path, monkeypatch, resnet18_state):
    """resnet18's 'published' file, served at a file:// URL in place of torchvision's."""
    path = _publish(tmp_path / "server", resnet18_state)
    monkeypatch.setattr(imagenet, "torchvision_url", lambda encoder: path.as_uri())
    return path


def _cache(tmp_path: Path) -> Path:
    return tmp_path / "torch" / "hub" / "checkpoints"


def _one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------ torchvision's ResNets


def test_imagenet_resnet_is_downloaded_into_torch_hub_cache_and_loaded(tmp_path, published, resnet18_state, capsys):
    path = fetch_weights("resnet18", "imagenet")
    assert path == _cache(tmp_path) / published.name
    assert path.read_bytes() == published.read_bytes()
    assert sorted(p.name for p in _cache(tmp_path).iterdir()) == [published.name]  # no partial file left
    assert f"downloaded {published.as_uri()}" in capsys.readouterr().err

    body = build_encoder("resnet18", 16, weights="imagenet").body.state_dict()
    assert set(body) == {key for key in resnet18_state if not key.startswith("fc.")}
    for key, value in body.items():
        assert torch.equal(value, resnet18_state[key]), key


def test_a_cached_file_is_used_without_reading_the_url(tmp_path, published, resnet18_state, capsys):
    first = fetch_weights("resnet18", "imagenet")
    capsys.readouterr()
    published.unlink()  # the address no longer answers: only the cache can serve the second call
    assert fetch_weights("resnet18", "imagenet") == first
    body = build_encoder("resnet18", 16, weights="imagenet").body
    assert torch.equal(body.conv1.weight, resnet18_state["conv1.weight"])
    assert "downloaded" not in capsys.readouterr().err


def test_the_paper_file_comes_from_torchvisions_own_metadata():
    """No URL written in prcl: torchvision's IMAGENET1K_V1 entry, whose name carries the hash torch.hub checks."""
    url = torchvision.models.ResNet101_Weights.IMAGENET1K_V1.url
    assert imagenet.TORCHVISION_WEIGHTS == "IMAGENET1K_V1" and url.endswith("/resnet101-63fe2227.pth")
    assert torch.hub.HASH_REGEX.search(Path(url).name).group(1) == "63fe2227"


def test_the_paper_configs_fetch_the_paper_file():
    from prcl.config import load_config

    for name in ("voc_blended.yaml", "voc_classic.yaml", "cityscapes.yaml", "cityscapes_150.yaml"):
        cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / name)
        assert (cfg.model.encoder, cfg.model.weights) == ("resnet101", "imagenet"), name


def test_a_hash_mismatch_is_refused_and_nothing_is_kept(tmp_path, monkeypatch, resnet18_state):
    forged = _publish(tmp_path / "server", resnet18_state, fake_hash="deadbeef")
    monkeypatch.setattr(imagenet, "torchvision_url", lambda encoder: forged.as_uri())
    with pytest.raises(UserError) as error:
        fetch_weights("resnet18", "imagenet")
    line = _one_line(error)
    assert "not the published one" in line and forged.as_uri() in line and 'expected "deadbeef"' in line
    assert not (tmp_path / "torch").exists()  # the folders it made for the download are gone too

    _cache(tmp_path).mkdir(parents=True)  # a cache folder that was there before stays, empty
    with pytest.raises(UserError, match="not the published one"):
        fetch_weights("resnet18", "imagenet")
    assert list(_cache(tmp_path).iterdir()) == []


def test_without_network_one_line_names_the_file_where_to_put_it_and_the_alternative(tmp_path, monkeypatch):
    url = (tmp_path / "server" / "resnet18-f37072fd.pth").as_uri()  # nothing there: the address fails
    monkeypatch.setattr(imagenet, "torchvision_url", lambda encoder: url)
    with pytest.raises(UserError) as error:
        fetch_weights("resnet18", "imagenet")
    line = _one_line(error)
    assert f"from {url}" in line and str(_cache(tmp_path) / "resnet18-f37072fd.pth") in line
    assert "model.weights=PATH" in line
    assert not (tmp_path / "torch").exists()


def test_a_cache_folder_that_cannot_be_written_is_one_line_and_creates_nothing(tmp_path, published, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("TORCH_HOME", str(blocker / "torch"))
    with pytest.raises(UserError) as error:
        fetch_weights("resnet18", "imagenet")
    line = _one_line(error)
    assert "cannot write the weights cache folder" in line and "TORCH_HOME" in line
    assert str(blocker / "torch" / "hub" / "checkpoints") in line and published.as_uri() in line
    assert blocker.read_text() == "not a folder"


def test_prcl_train_without_network_stops_before_the_run_folder(demo_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(imagenet, "torchvision_url", lambda encoder: (tmp_path / "resnet18-f37072fd.pth").as_uri())
    out = tmp_path / "run"
    assert main(["train", "-c", "/dev/null", *tiny_overrides(demo_root, out, **{"model.weights": "imagenet"})]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "cannot download" in lines[0] and "model.weights=PATH" in lines[0], lines
    assert not out.exists() and not (tmp_path / "torch").exists()


def test_a_run_starts_from_the_fetched_file(demo_root, tmp_path, published, resnet18_state):
    trainer = Trainer(tiny_config(demo_root, tmp_path / "run", **{"model.weights": "imagenet"}))
    encoder = trainer.nets["student"].encoder.body.state_dict()
    assert torch.equal(encoder["conv1.weight"], resnet18_state["conv1.weight"])
    assert torch.equal(encoder["layer4.1.bn2.running_var"], resnet18_state["layer4.1.bn2.running_var"])


@pytest.mark.slow
def test_a_resumed_run_needs_no_weights(demo_root, tmp_path):
    """The checkpoint holds every weight: resuming with model.weights=imagenet and no network goes on."""
    out = tmp_path / "run"
    Trainer(tiny_config(demo_root, out, iterations=2)).fit()
    resumed = Trainer(tiny_config(demo_root, out, iterations=3, **{"model.weights": "imagenet"}), resume="auto")
    assert resumed.step == 2 and not (tmp_path / "torch").exists()


# -------------------------------------------------------------------------- the packaged file, paths


def test_efficientnet_lite0_imagenet_is_the_packaged_file_and_downloads_nothing(tmp_path):
    assert fetch_weights("tf_efficientnet_lite0", "imagenet") == efficientnet_lite0_weights_path()
    assert not (tmp_path / "torch").exists() and not (tmp_path / "hf").exists()


def test_the_deep_stem_resnet_has_no_address_and_says_to_load_it_by_path():
    with pytest.raises(UserError) as error:
        fetch_weights("resnet101c", "imagenet")
    assert "no stable public address" in _one_line(error) and "model.weights=PATH" in str(error.value)


def test_a_local_path_is_checked_before_the_run(tmp_path, published):
    assert fetch_weights("resnet18", str(published)) == published
    assert fetch_weights("resnet18", None) is None
    with pytest.raises(UserError, match="missing.pth does not exist"):
        fetch_weights("resnet18", str(tmp_path / "missing.pth"))


# ---------------------------------------------------------------------------- timm's own weights


def _hf_cache_with(tmp_path: Path, encoder: str) -> dict[str, torch.Tensor]:
    """timm's weights for ``encoder`` placed in the (offline) Hugging Face cache as a download leaves them."""
    import safetensors.torch

    torch.manual_seed(4)
    state = {key: value.contiguous() for key, value in timm.create_model(encoder).state_dict().items()}
    repo = tmp_path / "hf" / "hub" / ("models--" + timm.models.get_pretrained_cfg(encoder).hf_hub_id.replace("/", "--"))
    revision = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    (repo / "snapshots" / revision).mkdir(parents=True)
    safetensors.torch.save_file(state, str(repo / "snapshots" / revision / "model.safetensors"))
    return state


def test_a_timm_encoder_loads_timms_weights_from_its_cache(tmp_path):
    state = _hf_cache_with(tmp_path, TIMM_ENCODER)
    assert fetch_weights(TIMM_ENCODER, "imagenet") == "imagenet"  # timm reads its cache when building
    body = build_encoder(TIMM_ENCODER, 16, weights="imagenet").body
    assert torch.equal(body.conv_stem.weight, state["conv_stem.weight"])
    assert torch.equal(body.bn1.running_mean, state["bn1.running_mean"])


def test_a_timm_encoder_without_network_is_one_line_with_both_ways_out(tmp_path):
    with pytest.raises(UserError) as error:
        fetch_weights(TIMM_ENCODER, "imagenet")
    line = _one_line(error)
    assert "https://huggingface.co/timm/" + TIMM_ENCODER in line
    assert "model.weights=PATH" in line and str(tmp_path / "hf" / "hub" / "models--timm--") in line
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------------- under torchrun


_TWO_PROCESSES = """
import json, os, sys, torch
from pathlib import Path
from prcl import distributed
from prcl.errors import UserError
from prcl.models import fetch_weights, imagenet

distributed.setup("cpu")
downloads = []
real = torch.hub.download_url_to_file
torch.hub.download_url_to_file = lambda *args, **kwargs: (downloads.append(1), real(*args, **kwargs))
results = {}
imagenet.torchvision_url = lambda encoder: Path(sys.argv[1]).as_uri()
try:
    fetch_weights("resnet18", "imagenet")
except UserError as error:
    results["unreachable"] = str(error)
downloads.clear()
imagenet.torchvision_url = lambda encoder: Path(sys.argv[2]).as_uri()
results["path"] = str(fetch_weights("resnet18", "imagenet"))
results["downloads"] = len(downloads)
Path(sys.argv[3], f"rank{distributed.rank()}.json").write_text(json.dumps(results))
distributed.cleanup()
"""


@pytest.mark.slow
def test_under_torchrun_the_first_process_downloads_and_the_other_waits(tmp_path, published):
    script = tmp_path / "fetch.py"
    script.write_text(textwrap.dedent(_TWO_PROCESSES))
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
            str(tmp_path / "missing-00000000.pth"), str(published), str(tmp_path)]
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1"}
    process = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)  # killed on a timeout
    assert process.returncode == 0, process.stderr[-3000:]
    first, second = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert first["downloads"] == 1 and second["downloads"] == 0  # one download, the other read the cache
    assert first["path"] == second["path"] == str(_cache(tmp_path) / published.name)
    # The failed fetch stopped both processes with a line instead of leaving the second one waiting.
    assert "cannot download" in first["unreachable"] and "another process failed" in second["unreachable"]
