"""A synthetic segmentation dataset the tests generate: coloured shapes on textured backgrounds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from . import with_sections

CLASSES = ["background", "disc", "square", "bar"]
COLOURS = {1: (200, 60, 50), 2: (50, 170, 70), 3: (60, 80, 210)}


def make_dataset(root: Path, n: int = 40, size: int = 64, seed: int = 0) -> Path:
    """``root/images/*.png`` + ``root/masks/*.png`` (class indices), names ``seqA_000.png`` .. so that
    group splits work too; returns ``root``."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        # Texture: low-frequency stripes plus noise, so colour alone is not trivially separable.
        phase, freq = rng.uniform(0, 6.28), rng.uniform(0.1, 0.4)
        base = 110 + 40 * np.sin(freq * (xx + yy) + phase)[..., None] + rng.normal(0, 18, (size, size, 3))
        image = base.clip(0, 255)
        mask = np.zeros((size, size), np.uint8)
        for cls in rng.permutation([1, 2, 3])[: rng.integers(1, 4)]:
            cy, cx = rng.integers(10, size - 10, 2)
            r = int(rng.integers(6, 14))
            if cls == 1:
                region = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
            elif cls == 2:
                region = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
            else:
                region = (abs(yy - cy) <= r // 3 + 1) & (abs(xx - cx) <= r + 6)
            colour = np.array(COLOURS[cls]) + rng.normal(0, 20, 3)
            image[region] = (colour + rng.normal(0, 12, (int(region.sum()), 3))).clip(0, 255)
            mask[region] = cls
        name = f"seq{'ABCD'[i % 4]}_{i:03d}.png"
        Image.fromarray(image.astype(np.uint8)).save(root / "images" / name)
        Image.fromarray(mask).save(root / "masks" / name)
    return root


def config(root: Path, out: Path, **sections) -> dict:
    """A config dict for ``make_dataset``'s data with a small random-init model; ``sections`` override."""
    cfg = {
        "model": {"backbone": "resnet18", "neck": "none", "head": "lraspp", "backbone_weights": None, "resize": 0},
        "data": {"format": "folder", "root": str(root), "classes": CLASSES, "val_ratio": 0.2, "seed": 0},
        "augment": {"crop_size": 64, "train": [{"name": "HorizontalFlip", "p": 0.5}], "val": []},
        "train": {"epochs": 2, "batch_size": 8, "optimizer": "adamw", "lr": 0.003, "weight_decay": 0.0,
                  "scheduler": "poly", "amp": "off", "workers": 0, "device": "cpu"},
        "output": {"dir": str(out), "name": "run", "num_predictions": 2},
    }
    return with_sections(cfg, sections)
