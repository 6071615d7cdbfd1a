"""The tests' data, written into tmp_path (never a file checked in): one module per kind, as torchvision
keeps its dataset fakes in one place.

- ``folders``: the folder segmentation layout (small PNG pairs whose red channel encodes the class), CamVid-like names
- ``segmentation``: a learnable segmentation set (coloured shapes on texture) and a run config for it
- ``person``: a binary (person / background) set from a real photo's instance mask
- ``classification``: an imagefolder set of two learnable classes, and messy files
- ``detection``: VOC XML and trees, a learnable box set (discs and squares), Penn-Fudan instance masks
- ``tool_files``: annotation tools' output (LabelMe, CVAT masks, Ultralytics YOLO) and a finetune helper
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image


def save(path: Path, array: np.ndarray, mode: Optional[str] = None) -> Path:
    """Write ``array`` as an image file (format from the suffix), creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def with_sections(cfg: dict[str, Any], sections: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``cfg`` with each of ``sections`` merged into its block key by key (the tests' config overrides)."""
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg
