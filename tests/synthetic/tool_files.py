"""Annotation-tool output written into tmp_path by the tests, in each tool's real layout: LabelMe JSON
beside images, CVAT's "Segmentation mask 1.1" export, Ultralytics YOLO trees."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image

from seg_transfer.viz import palette

from . import save

H, W = 32, 48


def image(seed: int = 0, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def png_b64(array: np.ndarray) -> str:
    """An array as base64 PNG: LabelMe's imageData, and its mask shapes' ``mask``."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------------- LabelMe
def shape(label: str, points: Sequence[Sequence[float]], kind: str = "polygon", mask: Optional[str] = None) -> dict:
    """One shape as LabelMe 5 writes it."""
    return {"label": label, "points": [list(map(float, p)) for p in points], "group_id": None, "description": "",
            "shape_type": kind, "flags": {}, "mask": mask}


def labelme(folder: Path, name: str, shapes: Sequence[dict], *, pixels: Optional[np.ndarray] = None,
            image_path: Optional[str] = None, embed: bool = False, write_image: bool = True,
            size: Optional[tuple[int, int]] = None) -> Path:
    """``folder/<name>.json`` (+ ``folder/<name>.png`` unless ``write_image`` is False) as LabelMe saves them;
    ``embed`` stores the image in ``imageData`` too (LabelMe's 'Save With Image Data')."""
    pixels = image(len(name)) if pixels is None else pixels
    folder.mkdir(parents=True, exist_ok=True)
    if write_image:
        save(folder / f"{name}.png", pixels)
    height, width = size or pixels.shape[:2]
    data = {"version": "5.4.1", "flags": {}, "shapes": list(shapes), "imagePath": image_path or f"{name}.png",
            "imageData": png_b64(pixels) if embed else None, "imageHeight": height, "imageWidth": width}
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=2))
    return path


def rect(label: str, x0: float, y0: float, x1: float, y1: float) -> dict:
    return shape(label, [(x0, y0), (x1, y1)], "rectangle")


# -------------------------------------------------------------------------------------------- CVAT
CVAT_LABELS = {"background": (0, 0, 0), "car": (250, 50, 83), "person": (61, 245, 61)}


def cvat_export(root: Path, masks: dict[str, np.ndarray], labels: Optional[dict[str, tuple]] = None,
                subsets: Optional[dict[str, Sequence[str]]] = None) -> Path:
    """CVAT's "Segmentation mask 1.1" export with images: labelmap.txt, JPEGImages/, SegmentationClass/ (RGB
    masks in the labelmap's colours; ``masks`` holds class indices), SegmentationObject/ and
    ImageSets/Segmentation/<subset>.txt (default.txt when ``subsets`` is None)."""
    labels = labels or CVAT_LABELS
    colours = np.array(list(labels.values()), np.uint8)
    lines = ["# label:color_rgb:parts:actions"] + [f"{n}:{','.join(map(str, c))}::" for n, c in labels.items()]
    root.mkdir(parents=True, exist_ok=True)
    (root / "labelmap.txt").write_text("\n".join(lines) + "\n")
    for k, (name, mask) in enumerate(masks.items()):
        save(root / "JPEGImages" / f"{name}.png", image(k, *mask.shape))
        save(root / "SegmentationClass" / f"{name}.png", colours[mask])
        save(root / "SegmentationObject" / f"{name}.png", palette(256)[(mask > 0).astype(np.uint8)])
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for subset, names in (subsets or {"default": list(masks)}).items():
        (lists / f"{subset}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


# -------------------------------------------------------------------------------------------- YOLO
def yolo_line(cls: int, box: Sequence[float], size: tuple[int, int] = (H, W)) -> str:
    """``class cx cy w h`` (normalised) for a pixel box [x0, y0, x1, y1] in an image of (H, W)."""
    x0, y0, x1, y1 = box
    height, width = size
    return f"{cls} {(x0 + x1) / 2 / width:.6f} {(y0 + y1) / 2 / height:.6f} {(x1 - x0) / width:.6f} {(y1 - y0) / height:.6f}"


def yolo_tree(root: Path, splits: dict[str, dict[str, list[str]]], names: Any = ("cat", "dog"),
              yaml_text: Optional[str] = None) -> Path:
    """An Ultralytics tree: ``images/<split>/<name>.png``, ``labels/<split>/<name>.txt`` (the given lines;
    an empty list writes an empty file) and data.yaml (``names`` a list or a mapping)."""
    for s, files in splits.items():
        for k, (name, lines) in enumerate(files.items()):
            save(root / "images" / s / f"{name}.png", image(k))
            (root / "labels" / s).mkdir(parents=True, exist_ok=True)
            (root / "labels" / s / f"{name}.txt").write_text("".join(f"{line}\n" for line in lines))
    if yaml_text is None:
        listed = (json.dumps(list(names)) if not isinstance(names, dict)
                  else "\n" + "".join(f"  {k}: {v}\n" for k, v in names.items()))
        yaml_text = f"path: .\ntrain: images/train\nval: images/val\nnames: {listed}\n"
    (root / "data.yaml").write_text(yaml_text)
    return root


# ------------------------------------------------------------------------------------ fine-tune smoke
SEG_MODEL = {"backbone": "resnet18", "neck": "none", "head": "lraspp", "backbone_weights": None, "resize": 0}
BOX_MODEL = {"backbone": "resnet18", "neck": "fpn", "head": "fasterrcnn", "backbone_weights": None, "weights": None,
             "resize": 64}


def finetune(tmp_path: Path, data: dict, model: Optional[dict] = None) -> Path:
    """One epoch of ``seg-transfer finetune`` on ``data`` with a tiny random-init model (the data check runs
    first, as always) -> the run folder."""
    import yaml

    from seg_transfer.cli import main

    cfg = {"model": model or SEG_MODEL, "data": data,
           "augment": {"crop_size": 32, "train": [{"name": "HorizontalFlip", "p": 0.5}], "val": []},
           "train": {"epochs": 1, "batch_size": 2, "optimizer": "sgd", "lr": 0.01, "weight_decay": 0.0,
                     "scheduler": "none", "amp": "off", "workers": 0, "device": "cpu"},
           "output": {"dir": str(tmp_path / "runs"), "name": "run", "num_predictions": 1}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(path), "-q"]) == 0
    return tmp_path / "runs" / "run"
