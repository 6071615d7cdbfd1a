"""Segmentation predictions: ``SegmentationResult`` (softmax probabilities, the argmax mask, overlays)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.utils import draw_segmentation_masks

from ..errors import unknown
from ..io import ImageInput, image_name, read_image, save_image, save_text
from ..models.build import model_info
from ..models.preprocess import Preprocess
from ..viz import colour, draw_legend, palette

BACKGROUND_NAMES = ("__background__", "background")


@dataclass
class SegmentationResult:
    """One image's prediction. ``probs`` is CxHxW softmax, ``mask`` HxW class indices, ``image`` 3xHxW uint8."""

    image: torch.Tensor
    probs: torch.Tensor
    mask: torch.Tensor
    classes: list[str]
    name: str = "image"
    ignore_background: bool = True

    def class_index(self, name: str) -> int:
        if name not in self.classes:
            raise unknown("class", name, self.classes, "--class")
        return self.classes.index(name)

    def class_mask(self, name: str) -> torch.Tensor:
        """That class's softmax probability, HxW float in [0, 1]."""
        return self.probs[self.class_index(name)]

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
        """Palette PNG of class indices (VOC colours)."""
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
        """Write ``<stem>_mask.png``, ``<stem>_overlay.png``, ``<stem>_<class>.png`` and ``<stem>.json``."""
        out, stem = Path(out_dir), stem or self.name
        for c in classes:
            self.class_index(c)  # fail before writing anything
        written = [save_image(self.mask_image(), out / f"{stem}_mask.png"),
                   save_image(self.overlay(), out / f"{stem}_overlay.png")]
        written += [save_image(self.probability_image(c), out / f"{stem}_{_safe(c)}.png") for c in classes]
        if json_report:
            report = {"image": self.name, "height": int(self.mask.shape[0]), "width": int(self.mask.shape[1]),
                      "fractions": self.fractions()}
            written.append(save_text(json.dumps(report, indent=2) + "\n", out / f"{stem}.json"))
        return written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


@torch.inference_mode()
def predict(model: nn.Module, preprocess: Preprocess, image: ImageInput,
            resize_to_input: bool = True) -> SegmentationResult:
    """Softmax at the model's resolution (torchvision's recipe); with ``resize_to_input`` the
    probabilities are resized bilinearly to the input size and the mask is their argmax."""
    rgb = read_image(image)
    device = next(model.parameters()).device
    batch = preprocess(rgb).unsqueeze(0).to(device)
    probs = model(batch)["out"].softmax(dim=1)
    if resize_to_input and probs.shape[-2:] != rgb.shape[-2:]:
        probs = F.interpolate(probs, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
    probs = probs[0].float().cpu()
    if not resize_to_input:
        rgb = F.interpolate(rgb[None].float(), size=probs.shape[-2:], mode="bilinear",
                            align_corners=False, antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
    return SegmentationResult(image=rgb, probs=probs, mask=probs.argmax(0), classes=list(model_info(model).classes),
                              name=image_name(image))
