"""The folder segmentation layout the data tests start from (small PNG pairs, a few classes)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seg_transfer.data import DataSplits, build_folder

from . import save

H, W = 32, 48
CLASSES = ["background", "road", "car"]
BLOCK = 8
FLAT = [f"f{k}" for k in range(6)]  # the names of the flat folder tree most data tests start from


def pair(seed: int, num_classes: int = len(CLASSES), h: int = H, w: int = W) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8 image, uint8 mask) where the image's red channel encodes the class: R = 40 * (class + 1).

    Blocks of 8x8 pixels share a class, so crops and scales keep several classes in view; R = 0 never
    occurs, so it marks padding after a transform.
    """
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, num_classes, (h // BLOCK + 1, w // BLOCK + 1))
    mask = np.kron(blocks, np.ones((BLOCK, BLOCK), dtype=np.int64))[:h, :w].astype(np.uint8)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = 40 * (mask + 1)
    image[..., 1] = (np.arange(w) * 5)[None, :]
    image[..., 2] = (np.arange(h) * 7)[:, None]
    return image, mask


def make_folder(root: Path, names: Sequence[str], images: str = "images", masks: str = "masks",
                num_classes: int = len(CLASSES)) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A folder dataset under ``root``: ``images/<name>.png`` + ``masks/<name>.png``; returns the arrays."""
    written = {}
    for k, name in enumerate(names):
        image, mask = pair(k, num_classes)
        save(root / images / f"{name}.png", image)
        save(root / masks / f"{name}.png", mask)
        written[name] = (image, mask)
    return written


def sequence_names(groups: dict[str, int]) -> list[str]:
    """CamVid-like names: {'0001TP': 2} -> ['0001TP_000000', '0001TP_000030']."""
    return [f"{g}_{30 * i:06d}" for g, n in groups.items() for i in range(n)]


def folder(root: Path, **options: Any) -> DataSplits:
    """``build_folder`` over a ``make_folder(root, FLAT)`` tree: the test classes, half the images in val."""
    return build_folder(root, classes=CLASSES, val_ratio=0.5, **options)
