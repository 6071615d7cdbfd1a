"""A synthetic person-vs-background set the binary segmentation tests generate from one Penn-Fudan photo:
crops of ``FudanPed00054.png`` with masks made from its instance-id mask (0 background, k = person k)
as foreground/background masks saved 0/255, the way binary masks are usually published."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["background", "person"]


def person_masks(image: Path, instance_mask: Path, scale: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """(RGB uint8, bool person mask) of the photo resized by ``scale`` (the mask: nearest, so no new ids)."""
    with Image.open(image) as img, Image.open(instance_mask) as inst:
        size = (round(img.width * scale), round(img.height * scale))
        return (np.asarray(img.convert("RGB").resize(size, Image.BILINEAR)),
                np.asarray(inst.resize(size, Image.NEAREST)) > 0)


def make_person_dataset(root: Path, image: Path, instance_mask: Path, n: int = 24, size: int = 64,
                        scale: float = 0.5, seed: int = 0) -> Path:
    """``root/images/crop_NNN.png`` + ``root/masks/crop_NNN.png`` (0 background, 255 person): ``n`` windows
    of ``size`` pixels centred near a random person pixel (so most crops hold some person and some
    background); returns ``root``."""
    rgb, person = person_masks(image, instance_mask, scale)
    h, w = person.shape
    rng = np.random.default_rng(seed)
    ys, xs = np.nonzero(person)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    half = size // 2
    for i in range(n):
        k = rng.integers(len(ys))
        cy = int(np.clip(ys[k] + rng.integers(-half, half), half, h - half))
        cx = int(np.clip(xs[k] + rng.integers(-half, half), half, w - half))
        window = np.s_[cy - half:cy + half, cx - half:cx + half]
        Image.fromarray(rgb[window]).save(root / "images" / f"crop_{i:03d}.png")
        Image.fromarray(np.where(person[window], 255, 0).astype(np.uint8)).save(root / "masks" / f"crop_{i:03d}.png")
    return root
