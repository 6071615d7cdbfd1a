"""Segmentation predictions: ``SegmentationResult`` (softmax probabilities, the argmax mask, overlays; a
binary model's foreground probability and its mask at a threshold)."""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.utils import draw_segmentation_masks

from ..errors import ConfigError, unknown
from ..io import ImageInput, image_name, read_image, save_image, save_text
from ..models.preprocess import Preprocess
from ..models.tta import TTA, binary_probs, segmentation_probs
from ..viz import colour, draw_legend, palette
from .backends import Runner, as_runner
from .tiling import DEFAULT_OVERLAP, auto_tile, segment_tiled

BACKGROUND_NAMES = ("__background__", "background")


@dataclass
class SegmentationResult:
    """One image's prediction. ``probs`` is CxHxW softmax, ``mask`` HxW class indices, ``image`` 3xHxW uint8.

    Tiled predictions of large images keep no ``probs`` (None), only ``kept``: class index -> HxW
    probability, for the classes asked for.

    ``binary`` (a binary model): ``probs`` is ``[1 - p, p]`` with ``p`` the foreground's sigmoid probability,
    ``mask`` is 1 where ``p >= threshold``; ``save`` writes the mask as 0/255 and ``p`` as ``<stem>_prob.png``.
    """

    image: torch.Tensor
    probs: Optional[torch.Tensor]
    mask: torch.Tensor
    classes: list[str]
    name: str = "image"
    ignore_background: bool = True
    kept: dict[int, torch.Tensor] = field(default_factory=dict)
    binary: bool = False
    threshold: float = 0.5

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise unknown("class", name, self.classes, "--class")
        return self.classes.index(name)

    def class_mask(self, name: str) -> torch.Tensor:
        """That class's softmax probability, HxW float in [0, 1]."""
        i = self.class_index(name)
        if self.probs is not None:
            return self.probs[i]
        if i not in self.kept:
            raise ConfigError(f"class '{name}': a tiled prediction keeps only the probabilities asked for "
                              f"(--class / keep=); kept: {', '.join(self.classes[k] for k in self.kept) or 'none'}")
        return self.kept[i]

    def fractions(self) -> dict[str, float]:
        """Share of pixels assigned to each class present."""
        counts = torch.bincount(self.mask.flatten(), minlength=len(self.classes))
        total = float(self.mask.numel())
        return {self.classes[i]: round(counts[i].item() / total, 6) for i in counts.nonzero().flatten().tolist()}

    def describe(self) -> str:
        """One line for the CLI: the largest classes by pixel share."""
        top = sorted(self.fractions().items(), key=lambda kv: -kv[1])[:4]
        return ", ".join(f"{k} {v:.1%}" for k, v in top)

    def _foreground(self) -> list[int]:
        present = torch.unique(self.mask).tolist()
        return [i for i in present if not (self.ignore_background and self.classes[i] in BACKGROUND_NAMES)]

    def mask_image(self) -> Image.Image:
        """Palette PNG of class indices (VOC colours); a binary model's: greyscale 0 (background) / 255."""
        if self.binary:
            return Image.fromarray((self.mask > 0).to(torch.uint8).mul(255).numpy(), mode="L")
        img = Image.fromarray(self.mask.to(torch.uint8).numpy(), mode="P")
        img.putpalette(palette().flatten().tolist())
        return img

    def overlay(self, alpha: float = 0.5) -> Image.Image:
        """The image with each present class coloured in and a legend of their names."""
        ids = self._foreground()
        out = self.image
        if ids:
            masks = torch.stack([self.mask == i for i in ids])
            out = draw_segmentation_masks(self.image, masks, alpha=alpha, colors=[colour(i) for i in ids])
        img = Image.fromarray(out.permute(1, 2, 0).numpy())
        return draw_legend(img, [(self.classes[i], colour(i)) for i in ids])

    def probability_image(self, name: str) -> Image.Image:
        """Greyscale PNG of a class's probability (0 -> black, 1 -> white)."""
        prob = self.class_mask(name)
        return Image.fromarray((prob * 255).round().clamp(0, 255).to(torch.uint8).numpy(), mode="L")

    def save(self, out_dir: Union[str, os.PathLike], classes: Sequence[str] = (), json_report: bool = False,
             stem: Optional[str] = None) -> list[Path]:
        """Write ``<stem>_mask.png``, ``<stem>_overlay.png``, ``<stem>_<class>.png`` and ``<stem>.json``; a
        binary model's mask as 0/255, and its foreground probability as ``<stem>_prob.png``."""
        out, stem = Path(out_dir), stem or self.name
        for c in classes:
            self.class_index(c)  # fail before writing anything
        written = [save_image(self.mask_image(), out / f"{stem}_mask.png"),
                   save_image(self.overlay(), out / f"{stem}_overlay.png")]
        if self.binary:
            written.append(save_image(self.probability_image(self.classes[1]), out / f"{stem}_prob.png"))
        written += [save_image(self.probability_image(c), out / f"{stem}_{_safe(c)}.png") for c in classes]
        if json_report:
            report: dict[str, object] = {"image": self.name, "height": int(self.mask.shape[0]),
                                         "width": int(self.mask.shape[1]), "fractions": self.fractions()}
            if self.binary:
                report["threshold"] = self.threshold
            written.append(save_text(json.dumps(report, indent=2) + "\n", out / f"{stem}.json"))
        return written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


@torch.inference_mode()
def predict(model: Union[nn.Module, Runner], preprocess: Preprocess, image: ImageInput, resize_to_input: bool = True,
            tile: Optional[int] = None, overlap: int = DEFAULT_OVERLAP, tta: Optional[TTA] = None,
            keep: Sequence[str] = (), threshold: Optional[float] = None) -> SegmentationResult:
    """Softmax at the model's resolution (torchvision's recipe); with ``resize_to_input`` the
    probabilities are resized bilinearly to the input size and the mask is their argmax.

    ``tile``: sliding-window inference at the image's own resolution (no resize), which keeps only the
    ``keep`` classes' probabilities; images above ``AUTO_TILE_PIXELS`` are tiled unless ``tile=0``.
    ``tta``: the softmax averaged over flips and scales. A binary model: the sigmoid as ``[1 - p, p]``
    (``tta.binary_probs``), the mask foreground where ``p >= threshold`` (default 0.5).
    """
    runner = as_runner(model)
    rgb = read_image(image)
    classes = list(runner.classes)
    binary = runner.meta.binary
    if threshold is not None and not binary:
        raise ConfigError(f"--threshold applies to binary segmentation models; this one has {len(classes)} "
                          f"classes (its mask is the most probable class)")
    threshold = 0.5 if threshold is None else threshold
    if not 0.0 <= threshold <= 1.0:
        raise ConfigError(f"--threshold: expected a number from 0 to 1, got {threshold}")

    def probs_of(batch: torch.Tensor) -> torch.Tensor:
        if tta is None:
            logits = runner(batch)
            return binary_probs(logits) if binary else logits.float().softmax(dim=1)
        return segmentation_probs(runner, batch, tta, binary=binary)

    size = auto_tile(rgb.shape[-2], rgb.shape[-1], tile)
    if size:
        if tile is None:
            warnings.warn(f"{image_name(image)}: {rgb.shape[-1]}x{rgb.shape[-2]} pixels: tiled ({size} px tiles, "
                          f"overlap {overlap}) at full resolution; --tile 0 resizes the whole image instead", stacklevel=2)
        ids = [classes.index(c) if c in classes else _unknown_class(c, classes) for c in keep]
        if binary and 1 not in ids:
            ids.append(1)  # the foreground's blended probability is what the mask thresholds
        mask, kept = segment_tiled(probs_of, rgb, preprocess, len(classes), tile=size, overlap=overlap, keep=ids)
        if binary:
            mask = (kept[1] >= threshold).long()
        return SegmentationResult(image=rgb, probs=None, mask=mask, classes=classes, name=image_name(image), kept=kept,
                                  binary=binary, threshold=threshold)
    probs = probs_of(preprocess(rgb).unsqueeze(0))
    if resize_to_input and probs.shape[-2:] != rgb.shape[-2:]:
        probs = F.interpolate(probs, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
    probs = probs[0].cpu()
    if not resize_to_input:
        rgb = F.interpolate(rgb[None].float(), size=probs.shape[-2:], mode="bilinear",
                            align_corners=False, antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
    # max(0).indices: the same first-maximum rule as argmax(0), and faster over the class axis on CPU
    # (benchmarks/RESULTS.md, "Inference speed")
    mask = (probs[1] >= threshold).long() if binary else probs.max(0).indices
    return SegmentationResult(image=rgb, probs=probs, mask=mask, classes=classes, name=image_name(image),
                              binary=binary, threshold=threshold)


def _unknown_class(name: str, classes: list[str]) -> int:
    raise unknown("class", name, classes, "--class")
