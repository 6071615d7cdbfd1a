"""Drawing shared by predictions and training plots: the VOC palette, a legend, labelled boxes."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

MASK_THRESHOLD = 0.5  # torchvision's Mask R-CNN masks are per-pixel probabilities
VOID = 255  # the palette entry of unlabelled pixels: Pascal VOC's cream border colour, unlike any class's


def palette(n: int = 256) -> np.ndarray:
    """The Pascal VOC colour map (bit-interleaved), so mask PNGs open in VOC tools with familiar colours."""
    cmap = np.zeros((n, 3), dtype=np.uint8)
    for i in range(n):
        c, rgb = i, [0, 0, 0]
        for bit in range(8):
            for ch in range(3):
                rgb[ch] |= ((c >> ch) & 1) << (7 - bit)
            c >>= 3
        cmap[i] = rgb
    return cmap


def colour(index: int) -> tuple[int, int, int]:
    """Class ``index``'s VOC colour as an RGB tuple."""
    r, g, b = (int(v) for v in palette()[int(index) % 256])
    return r, g, b


@lru_cache(maxsize=1)
def label_font() -> Optional[str]:
    """A TrueType font so labels scale with the image (matplotlib's bundled DejaVu Sans); None: PIL's bitmap font."""
    try:
        from matplotlib import font_manager
        return font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    except Exception:  # matplotlib missing or broken: small labels are still labels
        return None


def draw_legend(img: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    """A translucent box in the top-left corner listing ``(name, colour)`` swatches."""
    if not entries:
        return img
    size = max(12, min(img.size) // 30)
    font = ImageFont.load_default(size=size)
    draw = ImageDraw.Draw(img, "RGBA")
    pad, sw = size // 3, size
    widths = [draw.textlength(name, font=font) for name, _ in entries]
    box_w = int(pad * 3 + sw + max(widths))
    box_h = int(pad + len(entries) * (size + pad))
    draw.rectangle([0, 0, box_w, box_h], fill=(0, 0, 0, 150))
    for k, (name, rgb) in enumerate(entries):
        y = pad + k * (size + pad)
        draw.rectangle([pad, y, pad + sw, y + size], fill=rgb + (255,), outline=(255, 255, 255, 255))
        draw.text((2 * pad + sw, y), name, fill=(255, 255, 255, 255), font=font)
    return img


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
               scores: Any = None, masks: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 3xHxW image -> the same with instance masks (probabilities, if any) overlaid and each box drawn
    with 'class [score]', one VOC colour per class (class 0, black, is the background: never boxed)."""
    colours = [colour(int(c)) for c in labels]
    canvas = image
    if masks is not None and len(boxes):
        canvas = draw_segmentation_masks(canvas, masks > MASK_THRESHOLD, alpha=0.5, colors=colours)
    if not len(boxes):
        return canvas
    names = [classes[int(c)] if 0 <= int(c) < len(classes) else str(int(c)) for c in labels]
    if scores is not None:
        names = [f"{n} {float(s):.2f}" for n, s in zip(names, scores)]
    size = max(12, min(canvas.shape[-2:]) // 40)
    font = label_font()
    return draw_bounding_boxes(canvas, boxes.detach().cpu().float(), labels=names, colors=colours,
                               width=max(2, size // 6), font=font, font_size=size if font else None,
                               label_colors="white", fill_labels=True)
