"""The backbone table of ``seg-transfer models --backbones``: each registered backbone (and, with timm
installed, the timm backbones the suite tests) measured from the model itself (parameters, GFLOPs at
512x512, strides, channel widths) with the weights its library ships for it and whether they are cached.

Measuring runs on the ``meta`` device (shapes only: no memory for the weights, no arithmetic), so the whole
registry takes seconds; the figures are kept in ``$TORCH_HOME/seg_transfer/backbones.json``, keyed by the
torch and torchvision versions, and only names not yet in it are measured.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
import torchvision
from torch.utils.flop_counter import FlopCounterMode

from ..io import atomic_path
from . import timm_backbones
from . import weights as W
from .backbones import BACKBONES, Backbone, build_backbone, spec_of

FLOPS_SIZE = 512


@dataclass(frozen=True)
class BackboneFacts:
    """What ``models --backbones`` prints for one backbone (weights and cache state are read live)."""

    name: str
    family: str
    params_m: float
    gflops: float
    strides: list[int]
    channels: list[int]


def table_path() -> Path:
    return Path(torch.hub.get_dir()).parent / "seg_transfer" / "backbones.json"


def _on_meta(name: str) -> Backbone:
    """Backbone ``name`` with random values on the meta device (RegNet's builder computes its widths with real
    tensors: built on the CPU and moved)."""
    try:
        with torch.device("meta"):
            return build_backbone(name, None, resize=None)
    except NotImplementedError:
        return build_backbone(name, None, resize=None).to("meta")


def measure(name: str) -> BackboneFacts:
    """Parameters, forward GFLOPs at ``FLOPS_SIZE`` x ``FLOPS_SIZE`` (one image, multiply-adds counted
    twice, as ``FlopCounterMode`` counts), strides and channels of backbone ``name``."""
    backbone = _on_meta(name).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        backbone(torch.zeros(1, 3, FLOPS_SIZE, FLOPS_SIZE, device="meta"))
    return BackboneFacts(name, spec_of(name).family, round(sum(p.numel() for p in backbone.parameters()) / 1e6, 1),
                         round(counter.get_total_flops() / 1e9, 1), list(backbone.strides.values()),
                         list(backbone.out_channels.values()))


def listed() -> list[str]:
    """The table's rows: every registered backbone, then the timm backbones the suite tests (timm installed)."""
    return sorted(BACKBONES) + (list(timm_backbones.TESTED) if timm_backbones.available() else [])


def backbone_facts(progress: Optional[Callable[[str], None]] = None,
                   names: Optional[Iterable[str]] = None) -> list[BackboneFacts]:
    """The facts of ``names`` (default: every registered backbone), measuring only those not cached for these
    torch/torchvision versions."""
    names = listed() if names is None else list(names)
    key = f"torch {torch.__version__}, torchvision {torchvision.__version__}"
    if timm_backbones.available():
        import timm
        key += f", timm {timm.__version__}"
    path = table_path()
    try:
        saved = json.loads(path.read_text())
        cached = saved["rows"] if saved.get("versions") == key else {}
    except (OSError, ValueError, KeyError):
        cached = {}
    missing = [n for n in names if n not in cached]
    for i, name in enumerate(missing, 1):
        if progress is not None:
            progress(f"measuring {name} ({i}/{len(missing)})")
        cached[name] = asdict(measure(name))
    if missing:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps({"versions": key, "rows": cached}, indent=1))
    return [BackboneFacts(**cached[n]) for n in names]


def weights_state(name: str) -> str:
    """The weights entries torchvision has for ``name`` (DEFAULT marked ``*``), and whether DEFAULT is cached;
    for a timm backbone its default weights' hub repository."""
    if spec_of(name).source is timm_backbones.TIMM:
        return timm_backbones.weights_state(name)
    enum = W.weights_enum(name)
    entries = ", ".join(w.name + ("*" if w == enum.DEFAULT else "") for w in enum)
    return f"{entries} ({'cached' if W.cache_path(enum.DEFAULT).is_file() else 'not cached'})"
