"""Synthetic box data written into tmp_path by the detection tests: random images and VOC XML trees."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from seg_transfer.data import build_dataset

from . import save

H, W = 40, 60
CLASSES = ["cat", "dog"]


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def xml(objects, size=(W, H)) -> str:
    """VOC XML; ``objects`` are (name, (xmin, ymin, xmax, ymax))."""
    parts = [f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>"]
    for name, box in objects:
        parts.append(f"<object><name>{name}</name><bndbox>" + "".join(
            f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox></object>")
    return "".join(parts) + "</annotation>"


def voc_tree(root: Path, annotations: dict, train=None, val=None) -> Path:
    """JPEGImages/<name>.png + Annotations/<name>.xml (text, or None for no file) + ImageSets/Main lists."""
    for k, (name, text) in enumerate(annotations.items()):
        save(root / "JPEGImages" / f"{name}.png", image(k))
        if text is not None:
            (root / "Annotations").mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / f"{name}.xml").write_text(text)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    names = list(annotations)
    lists = root / "ImageSets" / "Main"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("\n".join(train if train is not None else names[:-1]) + "\n")
    (lists / "val.txt").write_text("\n".join(val if val is not None else names[-1:]) + "\n")
    return root


def voc(root: Path, **options):
    return build_dataset({"format": "voc_boxes", "root": str(root), "classes": CLASSES, **options})
