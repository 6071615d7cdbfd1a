"""A synthetic two-class image dataset the tests generate (imagefolder layout), and messy files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["horizontal", "vertical"]


def make_classes(root: Path, n: int = 24, size: int = 40, seed: int = 0) -> Path:
    """``root/horizontal/*.png`` (warm colours) and ``root/vertical/*.png`` (cool colours): stripes at a
    random phase and period, random shades and noise; the class shows in direction and hue (a horizontal
    flip keeps both). Returns ``root``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            period = int(rng.integers(4, 8))
            oy, ox = rng.integers(0, period, 2)
            on = (((yy + oy) if label == 0 else (xx + ox)) // period) % 2 == 0
            a, b = (rng.uniform([120, 40, 10], [240, 140, 80], (2, 3)) if label == 0 else
                    rng.uniform([10, 40, 120], [80, 140, 240], (2, 3)))
            image = np.where(on[..., None], a, b) + rng.normal(0, 20, (size, size, 3))
            Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(root / name / f"{name}_{i:03d}.png")
    return root


def add_messy_files(root: Path) -> dict[str, Path]:
    """One of each messy file into ``root/<first class>``; returns them by kind."""
    folder = root / CLASSES[0]
    files = {
        "gif": folder / "imageNotFound.gif",
        "empty": folder / "empty.jpg",
        "text": folder / "notes.jpg",
        "truncated": folder / "cut.jpg",
        "cmyk": folder / "print.jpg",
        "16bit": folder / "scan16.png",
        "spaces": folder / "ant photos.jpg",
    }
    Image.new("P", (120, 40), 3).save(files["gif"])
    files["empty"].write_bytes(b"")
    files["text"].write_text("not a picture\n")
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    rgb.save(files["truncated"], quality=95)
    files["truncated"].write_bytes(files["truncated"].read_bytes()[:600])
    rgb.convert("CMYK").save(files["cmyk"])
    Image.fromarray((np.arange(64 * 64, dtype=np.uint16) * 16).reshape(64, 64)).save(files["16bit"])  # I;16
    rgb.save(files["spaces"])
    return files
