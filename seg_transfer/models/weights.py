"""Weights specs -> torchvision ``Weights`` enums or local files; the checkpoint cache, offline errors,
hash verification, import and fetch.

A spec is ``"DEFAULT"``, an enum member name (``"IMAGENET1K_V2"``), ``None`` (random init) or the
path of a local ``.pth`` file. Everything about a checkpoint (URL, file name, categories,
preprocessing) is read from torchvision's enums, never copied here.
"""
from __future__ import annotations

import hashlib
import inspect
import os
import pickle
import shutil
import typing
import urllib.error
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from ..config import is_local_spec
from ..errors import ConfigError, SegTransferError, WeightsUnavailableError, unknown
from ..io import atomic_path

OFFLINE_ENV = "SEG_TRANSFER_OFFLINE"
Spec = Union[str, os.PathLike, None]
Resolved = Union[WeightsEnum, Path, None]


def checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``: where torchvision looks for downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cache_path(weights: WeightsEnum) -> Path:
    """The exact file torchvision's loader reads for ``weights``."""
    return checkpoint_dir() / os.path.basename(weights.url)


def entry_name(weights: WeightsEnum) -> str:
    """``'FCN_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1'``."""
    return f"{type(weights).__name__}.{weights.name}"


def weights_enum(model: str) -> type[WeightsEnum]:
    """The torchvision weights enum of builder ``model`` (``'fcn_resnet50'``)."""
    return torchvision.models.get_model_weights(model)


def resolve(model: str, spec: Spec, key: str = "weights",
            enum: Optional[type[WeightsEnum]] = None) -> Resolved:
    """Turn a weights spec for torchvision builder ``model`` (or an explicit ``enum``) into an enum
    member, a local file or None."""
    if spec is None or (isinstance(spec, str) and spec.lower() in ("none", "null", "")):
        return None
    if isinstance(spec, WeightsEnum):
        return spec
    if is_local_spec(spec):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"{key}: weights file {path} does not exist")
        return path
    enum = enum or weights_enum(model)
    name = str(spec)
    if "." in name:  # a full entry name such as 'ResNet50_Weights.IMAGENET1K_V2'
        cls_name, _, name = name.partition(".")
        if cls_name != enum.__name__:
            raise ConfigError(f"{key}: {spec} are not weights of {model} (expected {enum.__name__}.*)")
    if name == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[name]
    except KeyError:
        raise unknown(f"weights for {model}", spec, ["DEFAULT", *enum.__members__], key) from None


def builder_parameters(model: str) -> Mapping[str, inspect.Parameter]:
    """The keyword parameters of torchvision builder ``model`` (``weights_backbone``, ``aux_loss``...)."""
    return inspect.signature(torchvision.models.get_model_builder(model)).parameters


def backbone_weights_enum(model: str) -> tuple[type[WeightsEnum], Optional[WeightsEnum]]:
    """The backbone weights enum of torchvision builder ``model`` and the builder's own default entry
    (None for builders whose recipe names none, e.g. the v2 detectors: DEFAULT is then the enum's)."""
    default = builder_parameters(model)["weights_backbone"].default
    if default is not None:
        return type(default), default
    hint = typing.get_type_hints(torchvision.models.get_model_builder(model))["weights_backbone"]
    return next(a for a in typing.get_args(hint) if isinstance(a, type) and issubclass(a, WeightsEnum)), None


def official_arch_kwargs(model: str, weights: Optional[WeightsEnum] = None) -> dict[str, Any]:
    """Builder kwargs giving the architecture that ``weights`` (default: DEFAULT) were saved from."""
    weights = weights or weights_enum(model).DEFAULT
    kwargs: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if "aux_loss" in builder_parameters(model):
        kwargs["aux_loss"] = True  # torchvision's segmentation checkpoints all carry the aux head
    return kwargs


def assembled_weights(spec: Optional[str]) -> Optional[str]:
    """An assembled model's ``model.weights``: a local whole-model file, or None (DEFAULT / none / null:
    the pretrained part then comes from ``model.backbone_weights``)."""
    whole = None if spec is None or spec.lower() in ("default", "none", "null") else spec
    if whole is not None and not is_local_spec(whole):
        raise ConfigError(f"model.weights: an assembled model takes a local .pth file or null here, got "
                          f"'{whole}' (pretrained backbones come from model.backbone_weights)")
    return whole


def _offline_message(model: str, weights: WeightsEnum, key: str, reason: str) -> str:
    path = cache_path(weights)
    base = key.rpartition(".")[2]  # 'weights' / 'backbone_weights', however the caller names the key
    return (f"{model}: pretrained weights {entry_name(weights)} are not cached at {path} and cannot be "
            f"downloaded from {weights.url} ({reason}); copy that file there, or run "
            f"'seg-transfer weights import FILE', or set 'model.{base}: null'"
            + f" (--{base.replace('_', '-')} none)" + " to start from random values")


def download(weights: WeightsEnum, progress: bool = True) -> Path:
    """Download ``weights`` into the cache, checking the hash in its file name (torch.hub's way)."""
    path = cache_path(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = expected_hash(path.name)
    # torch.hub writes to a temporary file and renames it, so an interrupted download leaves nothing.
    torch.hub.download_url_to_file(weights.url, str(path), hash_prefix=prefix, progress=progress)
    return path


def ensure_cached(model: str, weights: WeightsEnum, key: str = "weights") -> Path:
    """Return the cached file of ``weights``, downloading it when possible, else one clear error."""
    path = cache_path(weights)
    if path.is_file():
        return path
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise WeightsUnavailableError(_offline_message(model, weights, key, f"{OFFLINE_ENV} is set"))
    try:
        return download(weights)
    except (urllib.error.URLError, OSError, RuntimeError) as err:
        reason = getattr(err, "reason", None) or err
        raise WeightsUnavailableError(
            _offline_message(model, weights, key, f"{type(err).__name__}: {reason}")) from None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from a ``.pth`` file, or the ``state_dict`` of this toolkit's checkpoint."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise WeightsUnavailableError(f"cannot read weights file {path}: {err}".splitlines()[0]) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsUnavailableError(f"weights file {path} holds no state dict")
    return obj


def load_into(module: nn.Module, state: dict[str, torch.Tensor], source: object,
              ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Strict ``load_state_dict`` whose failure is one line naming the file and the first mismatches."""
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches raise even with strict=False
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line),
                      str(err).splitlines()[0])
        raise WeightsUnavailableError(f"weights {source} do not fit this model: {detail}") from None
    missing = [k for k in result.missing_keys if not k.startswith(ignore_prefixes)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(ignore_prefixes)]
    if missing or unexpected:
        raise WeightsUnavailableError(
            f"weights {source} do not fit this model: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")


def build_torchvision(model: str, spec: Spec, key: str = "weights", **kwargs: Any) -> tuple[nn.Module, Resolved]:
    """Build torchvision model ``model`` with weights ``spec`` through torchvision's own loading path.

    ``kwargs`` go to the builder (a local file is loaded into the official architecture).
    """
    resolved = resolve(model, spec, key)
    try:
        if isinstance(resolved, WeightsEnum):
            path = ensure_cached(model, resolved, key)
            try:
                # torchvision: enum -> load_state_dict_from_url -> cache hit -> strict load_state_dict
                net = torchvision.models.get_model(model, weights=resolved, **kwargs)
            except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
                # A truncated, empty or foreign file: torch.load raises any of these.
                raise WeightsUnavailableError(
                    f"{model}: cannot load {path} ({type(err).__name__}: {(str(err) or 'empty').splitlines()[0]}); "
                    f"check it with 'seg-transfer weights verify'") from None
        elif isinstance(resolved, Path):
            net = torchvision.models.get_model(model, weights=None, **kwargs)
            load_into(net, read_state_dict(resolved), resolved)
        else:
            net = torchvision.models.get_model(model, weights=None, **kwargs)
    except ValueError as err:  # torchvision's own argument checks
        raise ConfigError(f"{key}: {model}: {err}") from None
    return net, resolved


def enum_or_default(model: str, resolved: Resolved) -> WeightsEnum:
    """``resolved`` if it is an enum member, else builder ``model``'s DEFAULT weights: random or local
    weights preprocess (and name classes) like the family's DEFAULT ones, so a model started from random
    values and one started from ImageNet see inputs the same way."""
    return resolved if isinstance(resolved, WeightsEnum) else weights_enum(model).DEFAULT


def categories(weights: Resolved) -> Optional[list[str]]:
    """Class names from an enum's ``meta['categories']``."""
    if isinstance(weights, WeightsEnum):
        return list(weights.meta["categories"])
    return None


def class_names(num_classes: Optional[int], classes: Optional[list[str]],
                default: Optional[list[str]]) -> list[str]:
    """The class names of a ``model:`` block: ``classes``, else ``default`` (the weights' categories)
    when the count agrees, else ``class_0..``."""
    if classes is not None:
        if num_classes is not None and num_classes != len(classes):
            raise ConfigError(f"model.classes: {len(classes)} names given but model.num_classes is {num_classes}")
        return list(classes)
    if num_classes is None and default is None:
        raise ConfigError("model.num_classes: required (or give model.classes) for an assembled model")
    if default is not None and (num_classes is None or num_classes == len(default)):
        return list(default)
    assert num_classes is not None
    return [f"class_{i}" for i in range(num_classes)]


# ---------------------------------------------------------------- cache management (CLI `weights`)

def expected_hash(filename: str) -> Optional[str]:
    """The sha256 prefix torch.hub encodes in official file names (``name-<hash>.pth``)."""
    match = torch.hub.HASH_REGEX.search(filename)
    return match.group(1) if match else None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Verification:
    path: Path
    expected: Optional[str]
    actual: str

    @property
    def ok(self) -> bool:
        return self.expected is not None and self.actual.startswith(self.expected)


def verify(path: Path, official_name: Optional[str] = None) -> Verification:
    """Compare a file's sha256 with the prefix in its official name; never modifies the file."""
    return Verification(Path(path), expected_hash(official_name or Path(path).name), sha256(Path(path)))


def entries(models: Iterable[str]) -> list[WeightsEnum]:
    """Every weights entry of the given torchvision builders, without duplicates, in order."""
    seen: dict[str, WeightsEnum] = {}
    for model in models:
        for w in weights_enum(model):
            seen.setdefault(entry_name(w), w)
    return list(seen.values())


def find_entry(name: str, models: Iterable[str]) -> WeightsEnum:
    """An entry by full name (``ResNet50_Weights.IMAGENET1K_V2``), official file name, or model name (DEFAULT)."""
    models = list(models)
    if name in models:
        return weights_enum(name).DEFAULT
    known = entries(models)
    for w in known:
        if name in (entry_name(w), os.path.basename(w.url)):
            return w
    raise unknown("weights entry", name, models + [entry_name(w) for w in known])


def import_file(src: Path, entry: WeightsEnum, force: bool = False) -> tuple[Path, Verification]:
    """Copy ``src`` into the cache under ``entry``'s official name after checking its hash."""
    src = Path(src)
    if not src.is_file():
        raise SegTransferError(f"{src}: no such file")
    dst = cache_path(entry)
    check = verify(src, dst.name)
    if not check.ok and not force:
        raise SegTransferError(
            f"{src}: sha256 {check.actual[:12]}... does not match {check.expected} expected for "
            f"{entry_name(entry)} ({dst.name}); not imported (use --force to import anyway)")
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return dst, check
