"""The dataset formats by name: the ``format`` key of a YAML ``data:`` block picks one builder."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from ..errors import ConfigError, unknown
from .coco import build_coco
from .folder import DataSplits, build_folder
from .voc import build_voc

DATASETS: dict[str, Callable[..., DataSplits]] = {
    "folder": build_folder,
    "voc": build_voc,
    "coco": build_coco,
}


def build_dataset(data: Mapping[str, Any]) -> DataSplits:
    """A ``data:`` block -> DataSplits; ``format`` names the builder, every other key is its argument."""
    options = dict(data)
    fmt = options.pop("format", None)
    if fmt is None:
        raise ConfigError(f"data: no 'format' key (one of {', '.join(sorted(DATASETS))})")
    if fmt not in DATASETS:
        raise unknown("format", fmt, DATASETS, where="data.format")
    params = inspect.signature(DATASETS[fmt]).parameters
    for key in options:
        if key not in params:
            raise unknown("key", f"data.{key}", ["data.format", *(f"data.{p}" for p in params)],
                          where=f"format {fmt}")
    missing = [p.name for p in params.values() if p.default is p.empty and p.name not in options]
    if missing:
        raise ConfigError(f"data: format {fmt} needs {', '.join(missing)}")
    return DATASETS[fmt](**options)
