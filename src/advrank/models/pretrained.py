"""Published pretrained weights (``--pretrained``): where each library keeps them, fetched into
that cache when the network is there and read from it when it is not.

* torchvision: the weights enum (``DEFAULT`` or a member such as ``IMAGENET1K_V2``), cached as
  ``torch.hub.get_dir()/checkpoints/<file name of the enum's url>``;
* timm: the model's ``pretrained_cfg``: the Hugging Face hub file (``model.safetensors``, else
  ``pytorch_model.bin``) of its ``hf_hub_id`` in the HF cache, or the file of its ``url`` in the
  torch hub cache (timm's old cache);
* open_clip: ``open_clip.download_pretrained`` for a tag of ``list_pretrained_tags_by_model``.

Every function returns the *path* of a weights file; it is then read like a ``--weights`` file
(``weights_only`` / safetensors: nothing in it is executed). Without network and without the
cached file, one :class:`AdvrankError` line says which file is missing and where to put it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlparse

from advrank.errors import AdvrankError

#: ``--pretrained`` without a value: the library's default weights
DEFAULT_TAG = "DEFAULT"
#: the HF hub files timm looks for, safest first
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def hub_checkpoint_path(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps ``url``'s file."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _offline(what: str, where: str) -> AdvrankError:
    return AdvrankError(f"--pretrained: cannot download {what} (no network?) and it is not "
                        f"cached: {where}")


def fetch_url(url: str, what: str) -> Path:
    """The torch hub cache file of ``url``, downloaded (its hash prefix checked, as torch hub
    does) when it is not there yet."""
    import torch

    path = hub_checkpoint_path(url)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([a-f0-9]+)\.", path.name)  # torch.hub's HASH_REGEX convention
    partial = path.with_name(path.name + ".partial")
    try:
        torch.hub.download_url_to_file(url, str(partial), match.group(1) if match else None,
                                       progress=False)
    except Exception as exc:  # URLError, socket errors, hash mismatch: nothing usable came
        partial.unlink(missing_ok=True)
        raise _offline(what, f"download {url} and put it at {path} "
                             f"({type(exc).__name__})") from None
    partial.replace(path)
    return path


def torchvision_weights(name: str, tag: str = DEFAULT_TAG) -> Path:
    """The weights file of torchvision model ``name``'s weights enum member ``tag``."""
    from torchvision import models

    try:
        enum = models.get_model_weights(name)
    except (ValueError, KeyError):
        raise AdvrankError(f"--pretrained: torchvision publishes no weights for {name}") from None
    names = [w.name for w in enum]
    if tag != DEFAULT_TAG and tag not in names:
        raise AdvrankError(f"--pretrained: {enum.__name__} has no {tag!r}; choose DEFAULT or "
                           f"one of {', '.join(names)}")
    weights = enum.DEFAULT if tag == DEFAULT_TAG else enum[tag]
    return fetch_url(weights.url, f"torchvision {name} {weights.name}")


def _hf_cached(repo_id: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in HF_FILES:
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def _hf_download(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    for filename in HF_FILES:
        try:
            return Path(hf_hub_download(repo_id, filename))
        except LocalEntryNotFoundError:
            raise  # not reachable and not cached: not a missing file on the hub
        except EntryNotFoundError:
            continue
    raise AdvrankError(f"--pretrained: the Hugging Face repository {repo_id} has none of "
                       f"{', '.join(HF_FILES)}")


def hf_cache_folder(repo_id: str) -> Path:
    """The HF cache folder of a model repository (``models--ORG--NAME``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def timm_weights(name: str, cfg: dict) -> Path:
    """The weights file of timm model ``name`` with pretrained config ``cfg``: a cached HF hub
    file of ``cfg['hf_hub_id']``, else the torch hub file of ``cfg['url']``, else downloaded
    (from the HF hub when the config names a repository, as timm does)."""
    repo, url = cfg.get("hf_hub_id") or None, cfg.get("url") or None
    if repo and (found := _hf_cached(repo)) is not None:
        return found
    if url and hub_checkpoint_path(url).is_file():
        return hub_checkpoint_path(url)
    if not repo and not url:
        raise AdvrankError(f"--pretrained: timm publishes no weights for {name}")
    if repo:
        try:
            return _hf_download(repo)
        except AdvrankError:
            raise
        except Exception as exc:  # offline, or the hub refused: say where the file goes
            hub = f"{HF_FILES[0]} of https://huggingface.co/{repo} in {hf_cache_folder(repo)}"
            alt = f", or download {url} to {hub_checkpoint_path(url)}" if url else ""
            raise _offline(f"timm {name}", f"fetch {hub}/snapshots/REV (refs/main naming REV)"
                                           f"{alt} ({type(exc).__name__})") from None
    return fetch_url(url, f"timm {name}")


def open_clip_weights(arch: str, tag: str) -> Path:
    """The checkpoint of OpenCLIP ``arch`` pretrained as ``tag`` (open_clip's own cache)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not tags:
        raise AdvrankError(f"--pretrained: open_clip publishes no weights for {arch}")
    if tag not in tags:
        raise AdvrankError(f"--pretrained for open_clip:{arch} needs a tag: one of "
                           f"{', '.join(tags)}")
    cfg = open_clip.get_pretrained_cfg(arch, tag)
    try:
        path = open_clip.download_pretrained(cfg)
    except Exception as exc:
        if cfg.get("hf_hub"):
            repo = "/".join(cfg["hf_hub"].split("/")[:2])
            where = f"the file of https://huggingface.co/{repo} in {hf_cache_folder(repo)}"
        else:
            where = f"{cfg.get('url')} in {Path('~/.cache/clip').expanduser()}"
        raise _offline(f"open_clip {arch} {tag}", f"{where} ({type(exc).__name__})") from None
    if not path:
        raise AdvrankError(f"--pretrained: open_clip has no download for {arch} {tag}")
    return Path(path)


def check_pretrained(tag: str, arch: str | None, weights: str | None) -> None:
    """Refuse ``--pretrained`` where it cannot apply (before any work)."""
    from advrank.registry import MODELS

    if not isinstance(tag, str) or not tag:
        raise AdvrankError(f"--pretrained must name weights (DEFAULT or an enum member), got "
                           f"{tag!r}")
    if weights is not None:
        raise AdvrankError("give --weights FILE or --pretrained, not both")
    if arch is None:
        raise AdvrankError("--pretrained needs --arch (a fine-tuned --init checkpoint has its "
                           "own weights)")
    if not MODELS.entry(arch).info.get("pretrained"):
        raise AdvrankError(f"--pretrained: model {arch} has no published pretrained weights; "
                           "give --weights FILE")


def builtin_weights(arch: str, tag: str) -> Path:
    """The published weights file of built-in model ``arch``'s backbone (the torchvision
    weights its registry entry names)."""
    from advrank.registry import MODELS

    return torchvision_weights(MODELS.entry(arch).info["pretrained"], tag)
