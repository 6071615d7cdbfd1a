"""Sliding-window inference for images too large to resize: segmentation logits blended across tile
overlaps with a linear-ramp weight, in bounded memory; detection boxes of every tile merged by class-wise
NMS (as SAHI does).

Memory: segmentation keeps only the blend *frontier* (the rows the next tile row still overlaps, C x
overlap x width, and the columns the next tile overlaps) plus a batch of tiles, never C x H x W; what
grows with the image is the image itself and the class-index mask.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

from ..errors import ConfigError
from ..models.preprocess import Preprocess
from ..models.tta import merge_detections

DEFAULT_TILE = 512
DEFAULT_OVERLAP = 128
# Images with more pixels than this are tiled even without --tile (the whole-image softmax alone would
# be C x H x W floats: 21 classes of a 4096 x 4096 photo is 1.4 GB).
AUTO_TILE_PIXELS = 4096 * 4096
TILE_BATCH = 4


def check_tiling(tile: int, overlap: int) -> None:
    if tile < 32:
        raise ConfigError(f"--tile {tile}: expected at least 32 pixels (or 0 for no tiling)")
    if not 0 <= overlap < tile // 2 + 1:
        raise ConfigError(f"--overlap {overlap}: expected 0 to half the tile ({tile // 2})")


def starts(length: int, tile: int, overlap: int) -> list[int]:
    """Evenly spaced tile starts covering ``length``, neighbours overlapping by at least ``overlap``."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return sorted({round(i * (length - tile) / (n - 1)) for i in range(n)})


def ramp(size: int, overlap: int) -> torch.Tensor:
    """1 in the middle, falling linearly towards both edges over ``overlap`` pixels (never 0)."""
    i = torch.arange(size, dtype=torch.float32)
    edge = torch.minimum(i + 0.5, size - i - 0.5)
    return (edge / max(overlap, 1)).clamp(1e-3, 1.0)


def segment_tiled(probs_of: Callable[[torch.Tensor], torch.Tensor], rgb: torch.Tensor, preprocess: Preprocess,
                  num_classes: int, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                  keep: Sequence[int] = (), batch: int = TILE_BATCH) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
    """Class-index mask (HxW long) of a 3xHxW uint8 image at its own resolution, and the blended
    probabilities of the ``keep`` classes (HxW each).

    ``probs_of`` maps a preprocessed NxCxhxw batch to NxCxhxw softmax probabilities (TTA included).
    Tiles are preprocessed one batch at a time (mean/std only: tiling replaces the resize).
    """
    check_tiling(tile, overlap)
    _, H, W = rgb.shape
    th, tw = min(tile, H), min(tile, W)
    ys, xs = starts(H, tile, overlap), starts(W, tile, overlap)
    weight = ramp(th, overlap)[:, None] * ramp(tw, overlap)[None, :]
    norm = Preprocess(mean=preprocess.mean, std=preprocess.std)
    mask = torch.empty(H, W, dtype=torch.long)
    kept = {k: torch.empty(H, W) for k in keep}
    C = num_classes + 1  # the last channel sums the weights
    # The blended sums of the rows a tile row shares with the next, in one float16 buffer: tile c reads
    # columns from x0 + shared on and writes columns before x0 + xn <= x0 + tw, so reads never see this
    # row's writes. Float16 halves the only part of memory that grows with the width (5e-4 relative).
    carry = torch.zeros(C, max([y1 - y0 for y0, y1 in zip(ys[1:], [y + th for y in ys])], default=0), W,
                        dtype=torch.float16)
    hc = 0  # rows of carry that belong to this tile row
    for r, y0 in enumerate(ys):
        y1 = y0 + th
        yn = ys[r + 1] if r + 1 < len(ys) else y1  # rows from yn on are shared with the next tile row
        left = torch.zeros(C, th, 0)  # sums of the columns the previous tile in this row shares
        for b in range(0, len(xs), batch):
            chunk = xs[b:b + batch]
            probs = probs_of(torch.stack([norm(rgb[:, y0:y1, x0:x0 + tw]) for x0 in chunk])).float().cpu()
            for j, x0 in enumerate(chunk):
                c = b + j
                acc = torch.cat([probs[j] * weight, weight[None]])
                shared = left.shape[2]
                acc[:, :, :shared] += left
                acc[:, :hc, shared:] += carry[:, :hc, x0 + shared:x0 + tw].float()
                xn = xs[c + 1] - x0 if c + 1 < len(xs) else tw  # columns from xn on go to the next tile
                final = acc[:, :yn - y0, :xn]
                mask[y0:yn, x0:x0 + xn] = final[:-1].argmax(0)
                for k, out in kept.items():
                    out[y0:yn, x0:x0 + xn] = final[k] / final[-1]
                carry[:, :y1 - yn, x0:x0 + xn] = acc[:, yn - y0:, :xn]
                left = acc[:, :, xn:].clone()
            del probs
        hc = y1 - yn
    return mask, kept


def detect_tiled(detect: Callable[[list[torch.Tensor]], list[dict[str, torch.Tensor]]], image: torch.Tensor,
                 tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, whole: bool = True,
                 batch: int = TILE_BATCH) -> dict[str, torch.Tensor]:
    """Detections of a preprocessed 3xHxW image from overlapping tiles (and, with ``whole``, the whole
    image for the objects larger than a tile), boxes in the image's pixels, merged by class-wise NMS."""
    check_tiling(tile, overlap)
    _, H, W = image.shape
    th, tw = min(tile, H), min(tile, W)
    origins = [(y, x) for y in starts(H, tile, overlap) for x in starts(W, tile, overlap)]
    found: list[dict[str, torch.Tensor]] = []
    for b in range(0, len(origins), batch):
        chunk = origins[b:b + batch]
        outs = detect([image[:, y:y + th, x:x + tw] for y, x in chunk])
        for (y, x), out in zip(chunk, outs):
            shift = torch.tensor([x, y, x, y], dtype=torch.float32)
            found.append({"boxes": out["boxes"].float().cpu() + shift, "labels": out["labels"].cpu(),
                          "scores": out["scores"].float().cpu()})
    if whole and len(origins) > 1:
        found += [{k: v.cpu() for k, v in out.items() if k in ("boxes", "labels", "scores")}
                  for out in detect([image])]
    return merge_detections(found)


def auto_tile(height: int, width: int, tile: Optional[int]) -> Optional[int]:
    """The tile size to use: ``tile`` as given (0 disables), else the default above AUTO_TILE_PIXELS."""
    if tile is not None:
        return tile or None
    return DEFAULT_TILE if height * width > AUTO_TILE_PIXELS else None
