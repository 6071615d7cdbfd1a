"""Weights of timm backbones: the file timm's pretrained path loads, found in the local Hugging Face cache
first (offline first), downloaded there only when it is missing and the network may be used.

timm names each model's default weights in its ``pretrained_cfg`` (``hf_hub_id``, e.g.
``timm/convnext_atto.d2_in1k``, and an optional ``hf_hub_filename``); without a file name timm tries
``model.safetensors`` then ``pytorch_model.bin``. The cache folder is huggingface_hub's own
(``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``), in its own layout
(``models--<org>--<name>/snapshots/<commit>/<file>``), read through huggingface_hub, never spelled here.
"""
from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import Any, Optional, cast

from ..config import is_local_spec
from ..errors import ConfigError, WeightsUnavailableError
from . import weights as W

EXTRA = "pip install 'seg_transfer[timm]'"


def require_timm(name: str) -> ModuleType:
    """The ``timm`` module, or one line saying that backbone ``name`` needs the optional extra."""
    try:
        import timm
    except ImportError:
        raise ConfigError(f"model.backbone: {name} needs timm, the optional 'timm' extra ({EXTRA})") from None
    return timm


def hub_cache() -> Path:
    """huggingface_hub's cache folder (read at each call: tests and users may point it elsewhere)."""
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


def hub_files(name: str, arch: str) -> tuple[str, Optional[str], list[str]]:
    """(repo id, revision, file names in timm's order of preference) of timm model ``arch``'s default weights."""
    timm = require_timm(name)
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        raise WeightsUnavailableError(
            f"{name}: timm names no pretrained weights on the Hugging Face hub for '{arch}'; give a local file "
            f"(model.backbone_weights: PATH) or null")
    from timm.models._hub import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    repo, _, revision = str(cfg.hf_hub_id).partition("@")
    files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    return repo, revision or None, files


def cached_file(name: str, arch: str) -> Optional[Path]:
    """The cached weights file of ``arch`` (the first of timm's file names that is there), else None."""
    from huggingface_hub import try_to_load_from_cache
    repo, revision, files = hub_files(name, arch)
    for file in files:
        found = try_to_load_from_cache(repo, file, cache_dir=hub_cache(), revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def offline() -> bool:
    from huggingface_hub import constants
    return os.environ.get(W.OFFLINE_ENV, "") not in ("", "0") or bool(constants.HF_HUB_OFFLINE)


def _missing(name: str, arch: str, reason: str) -> WeightsUnavailableError:
    from huggingface_hub.file_download import repo_folder_name
    repo, _, files = hub_files(name, arch)
    folder = hub_cache() / repo_folder_name(repo_id=repo, repo_type="model")
    return WeightsUnavailableError(
        f"{name}: pretrained weights {repo} ({files[0]}) are not in the Hugging Face cache {folder} and cannot "
        f"be downloaded ({reason}); run 'hf download {repo} {files[0]}' where there is network and copy "
        f"{folder.name} into {hub_cache()}, or set 'model.backbone_weights: null' (--backbone-weights none) "
        f"to start from random values")


def download(name: str, arch: str) -> Path:
    """Download ``arch``'s default weights into the cache (huggingface_hub's ``hf_hub_download``)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    repo, revision, files = hub_files(name, arch)
    reason = "not found on the hub"
    for file in files:
        try:
            return Path(hf_hub_download(repo, file, revision=revision, cache_dir=hub_cache()))
        except LocalEntryNotFoundError:  # the hub could not be reached (a subclass of the next)
            raise _missing(name, arch, "the hub cannot be reached") from None
        except EntryNotFoundError:
            continue  # timm's next file name
        except OSError as err:
            raise _missing(name, arch, f"{type(err).__name__}: {str(err).splitlines()[0]}") from None
    raise _missing(name, arch, reason)


def weights_file(name: str, arch: str, spec: W.Spec, key: str) -> Optional[Path]:
    """The file timm loads for weights ``spec`` of backbone ``name`` (timm model ``arch``): DEFAULT -> the
    cached (else downloaded) default weights, a local path -> that file, None/none/null -> None (random)."""
    if spec is None or str(spec).lower() in ("none", "null", "") or is_local_spec(spec):
        return cast(Optional[Path], W.resolve("", spec, key))  # random, or a local file that must exist
    if str(spec) != "DEFAULT":
        raise ConfigError(f"{key}: timm backbones take DEFAULT, a local file or null, got '{spec}'; other "
                          f"pretrained weights are chosen by tag in the name ({name}.<tag>, see "
                          f"timm.list_pretrained('{arch.partition('.')[0]}*'))")
    cached = cached_file(name, arch)
    if cached is not None:
        return cached
    if offline():
        raise _missing(name, arch, f"{W.OFFLINE_ENV} or HF_HUB_OFFLINE is set")
    return download(name, arch)


def pretrained_kwargs(file: Optional[Path]) -> dict[str, Any]:
    """``timm.create_model`` arguments that load ``file`` through timm's own pretrained path (its filters,
    classifier removal and strict load), or random values when None."""
    if file is None:
        return {"pretrained": False}
    # source None: timm then loads pretrained_cfg['file'] before any hub id or URL
    return {"pretrained": True, "pretrained_cfg_overlay": {"file": str(file), "source": None}}
