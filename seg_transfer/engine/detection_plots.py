"""predictions.png for detectors: a row per val image, ground-truth boxes | predicted boxes with scores."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from matplotlib.figure import Figure
from torch import nn
from torchvision.utils import draw_bounding_boxes

from ..predict import palette
from .plots import _save


def draw_boxes(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, classes: Sequence[str],
               scores: Any = None) -> torch.Tensor:
    """3xHxW float [0, 1] image -> uint8 3xHxW with labelled boxes, one VOC-palette colour per class."""
    pixels = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    if not len(boxes):
        return pixels
    colours = palette(max(len(classes), 2))
    names = [classes[int(c)] if 0 <= int(c) < len(classes) else str(int(c)) for c in labels]
    if scores is not None:
        names = [f"{n} {float(s):.2f}" for n, s in zip(names, scores)]
    return draw_bounding_boxes(pixels, boxes.detach().cpu().float(), labels=names,
                               colors=[tuple(int(v) for v in colours[int(c) % len(colours)]) for c in labels],
                               width=max(1, round(max(pixels.shape[-2:]) / 250)))


@torch.inference_mode()
def plot_detections(model: nn.Module, dataset: Any, n: int, device: torch.device, classes: Sequence[str],
                    path: Path, score_threshold: float = 0.5) -> Path:
    """The first ``n`` items of ``dataset`` (transformed: image tensor, target dict) through ``model``."""
    model.eval()
    n = min(n, len(dataset))
    fig = Figure(figsize=(8, 3.2 * max(n, 1)), layout="constrained")
    axes = fig.subplots(max(n, 1), 2, squeeze=False)
    for i in range(n):
        image, target = dataset[i]
        out = model([image.to(device)])[0]
        keep = out["scores"] >= score_threshold
        panels = [(draw_boxes(image, target["boxes"], target["labels"], classes),
                   f"ground truth ({len(target['boxes'])} boxes)"),
                  (draw_boxes(image, out["boxes"][keep], out["labels"][keep], classes, out["scores"][keep]),
                   f"prediction (score >= {score_threshold}: {int(keep.sum())} boxes)")]
        for ax, (pixels, title) in zip(axes[i], panels):
            ax.imshow(pixels.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    return _save(fig, path)
