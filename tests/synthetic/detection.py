"""Box data the tests write: VOC XML and VOC trees of random images (``voc_xml``, ``voc_tree``, ``voc``;
classes ``TREE_CLASSES``), and a learnable set of coloured discs and squares on textured backgrounds
(``make_voc_boxes``, classes ``CLASSES``) written as a VOC detection tree (JPEGImages/, Annotations/*.xml,
ImageSets/Main/{train,val}.txt), or as Penn-Fudan instance masks."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from seg_transfer.data import DataSplits, build_dataset

from . import save, with_sections

CLASSES = ["disc", "square"]  # make_voc_boxes
COLOURS = {1: (210, 60, 50), 2: (50, 90, 210)}
TREE_CLASSES = ["cat", "dog"]  # voc_tree / voc
H, W = 40, 60  # voc_tree's images


def voc_xml(objects: Sequence[tuple[str, Sequence[Any]]], width: int = W, height: int = H,
            filename: Optional[str] = None) -> str:
    """A VOC annotation; ``objects`` are (name, (xmin, ymin, xmax, ymax)), values written as given
    (floats compactly), so a test can also write a bad one."""
    def text(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    parts = ["<annotation>" + (f"<filename>{filename}</filename>" if filename else ""),
             f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"]
    for name, box in objects:
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox>" + "".join(
            f"<{k}>{text(v)}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox></object>")
    return "".join(parts) + "</annotation>"


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def voc_tree(root: Path, annotations: dict, train=None, val=None) -> Path:
    """JPEGImages/<name>.png + Annotations/<name>.xml (text, or None for no file) + ImageSets/Main lists
    (default: the last name is val)."""
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


def voc(root: Path, **options: Any) -> DataSplits:
    return build_dataset({"format": "voc_boxes", "root": str(root), "classes": TREE_CLASSES, **options})


def draw(rng: np.random.Generator, size: int, max_objects: int = 3
         ) -> tuple[np.ndarray, list[tuple[str, list[float]]], np.ndarray]:
    """One image: (uint8 HxWx3, objects, instance-id mask) with 0..max_objects non-overlapping shapes."""
    yy, xx = np.mgrid[:size, :size]
    phase, freq = rng.uniform(0, 6.28), rng.uniform(0.1, 0.4)
    image = (110 + 40 * np.sin(freq * (xx + yy) + phase)[..., None] + rng.normal(0, 15, (size, size, 3)))
    ids = np.zeros((size, size), np.uint8)
    objects: list[tuple[str, list[float]]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        cls = int(rng.integers(1, 3))
        r = int(rng.integers(size // 10, size // 5))
        cy, cx = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
        if cls == 1:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            region = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        if (ids[region] > 0).any():
            continue  # keep shapes apart: boxes then match regions exactly
        image[region] = np.array(COLOURS[cls]) + rng.normal(0, 15, (int(region.sum()), 3))
        ids[region] = len(objects) + 1
        ys, xs = np.nonzero(region)
        objects.append((CLASSES[cls - 1], [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]))
    return image.clip(0, 255).astype(np.uint8), objects, ids


def make_voc_boxes(root: Path, n: int = 40, size: int = 96, seed: int = 0, val: Optional[int] = None) -> Path:
    """``root`` as a VOC detection tree; the last ``val`` (default n // 4) images are the val list."""
    rng = np.random.default_rng(seed)
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        image, objects, _ = draw(rng, size)
        name = f"img_{i:03d}"
        Image.fromarray(image).save(root / "JPEGImages" / f"{name}.png")  # PNG: no JPEG drift in tests
        (root / "Annotations" / f"{name}.xml").write_text(voc_xml(objects, size, size, f"{name}.png"))
        names.append(name)
    n_val = n // 4 if val is None else val
    (root / "ImageSets/Main/train.txt").write_text("\n".join(names[:n - n_val]) + "\n")
    (root / "ImageSets/Main/val.txt").write_text("\n".join(names[n - n_val:]) + "\n")
    return root


def make_instance_masks(root: Path, n: int = 6, size: int = 64, seed: int = 0) -> Path:
    """Penn-Fudan layout: ``PNGImages/<name>.png`` + ``PedMasks/<name>_mask.png`` (instance ids, 0 = none)."""
    rng = np.random.default_rng(seed)
    (root / "PNGImages").mkdir(parents=True, exist_ok=True)
    (root / "PedMasks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, _, ids = draw(rng, size)
        Image.fromarray(image).save(root / "PNGImages" / f"ped_{i:03d}.png")
        Image.fromarray(ids).save(root / "PedMasks" / f"ped_{i:03d}_mask.png")
    return root


def config(root: Path, out: Path, model: dict, **sections) -> dict:
    """A run config for ``make_voc_boxes``'s data; ``sections`` override blocks key by key."""
    cfg = {
        "model": model,
        "data": {"format": "voc_boxes", "root": str(root), "classes": CLASSES},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}], "val": []},
        "train": {"epochs": 2, "batch_size": 4, "optimizer": "sgd", "lr": 0.02, "weight_decay": 0.0,
                  "scheduler": "none", "amp": "off", "workers": 0, "device": "cpu"},
        "output": {"dir": str(out), "name": "run", "num_predictions": 2},
    }
    return with_sections(cfg, sections)
