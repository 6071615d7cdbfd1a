"""Inference: ``Predictor`` turns images into ``SegmentationResult``s (masks, probabilities, overlays)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from torchvision.utils import draw_segmentation_masks

from .errors import ConfigError, unknown
from .io import ImageInput, read_image, save_image, save_text
from .models.build import create_model
from .models.checkpoint import load_checkpoint
from .predict_classification import ClassificationResult, predict_classification  # noqa: F401 (re-exported)
from .predict_detection import DetectionResult, predict_detection  # noqa: F401 (re-exported)

BACKGROUND_NAMES = ("__background__", "background")


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


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``'cpu'``, ``'cuda'``, ``'cuda:1'`` or None (CUDA when available); a missing GPU is a clear error."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"--device {device}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: CUDA is not available on this machine (torch "
                              f"{torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {device}: unsupported; use cpu, cuda or cuda:N")
    return device


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
        cmap = palette()
        out = self.image
        if ids:
            masks = torch.stack([self.mask == i for i in ids])
            out = draw_segmentation_masks(self.image, masks, alpha=alpha,
                                          colors=[tuple(int(v) for v in cmap[i]) for i in ids])
        img = Image.fromarray(out.permute(1, 2, 0).numpy())
        return _draw_legend(img, [(self.classes[i], tuple(int(v) for v in cmap[i])) for i in ids])

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


def _draw_legend(img: Image.Image, entries: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
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
    for k, (name, colour) in enumerate(entries):
        y = pad + k * (size + pad)
        draw.rectangle([pad, y, pad + sw, y + size], fill=colour + (255,), outline=(255, 255, 255, 255))
        draw.text((2 * pad + sw, y), name, fill=(255, 255, 255, 255), font=font)
    return img


class Predictor:
    """``Predictor("fcn_resnet50")``, ``Predictor(model)`` or ``Predictor.from_checkpoint("best.pt")``;
    ``predict(image)`` accepts a path, PIL image, numpy array or tensor."""

    def __init__(self, model: Union[str, nn.Module], device: Union[str, torch.device, None] = "cpu",
                 **model_kwargs: Any) -> None:
        self.device = resolve_device(device)
        if isinstance(model, str):
            model = create_model(model, **model_kwargs)
        if not hasattr(model, "info"):
            raise ConfigError("Predictor needs a model built by seg_transfer (it carries classes and preprocessing)")
        self.model = model.to(self.device).eval()
        self.classes: list[str] = list(model.info.classes)
        self.preprocess = model.info.preprocess

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device: Union[str, torch.device, None] = "cpu"
                        ) -> "Predictor":
        return cls(load_checkpoint(path), device=device)

    def predict(self, image: ImageInput, **options: Any) -> Any:
        """One image's result, of the model's task: a ``SegmentationResult`` for segmentation models."""
        task = self.model.info.task
        if task not in TASK_PREDICT:
            raise ConfigError(f"Predictor: no predictions for task '{task}' (known: {', '.join(TASK_PREDICT)})")
        return TASK_PREDICT[task](self, image, **options)

    @torch.inference_mode()
    def predict_segmentation(self, image: ImageInput, resize_to_input: bool = True) -> SegmentationResult:
        """Softmax at the model's resolution (torchvision's recipe); with ``resize_to_input`` the
        probabilities are resized bilinearly to the input size and the mask is their argmax."""
        rgb = read_image(image)
        batch = self.preprocess(rgb).unsqueeze(0).to(self.device)
        probs = self.model(batch)["out"].softmax(dim=1)
        if resize_to_input and probs.shape[-2:] != rgb.shape[-2:]:
            probs = F.interpolate(probs, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        probs = probs[0].float().cpu()
        if not resize_to_input:
            rgb = F.interpolate(rgb[None].float(), size=probs.shape[-2:], mode="bilinear",
                                align_corners=False, antialias=True)[0].round().clamp(0, 255).to(torch.uint8)
        name = Path(image).stem if isinstance(image, (str, os.PathLike)) else "image"
        return SegmentationResult(image=rgb, probs=probs, mask=probs.argmax(0), classes=self.classes, name=name)

    def predict_many(self, images: Iterable[ImageInput], **options: Any) -> Iterable[Any]:
        for image in images:
            yield self.predict(image, **options)


# Each task's prediction method, by ``model.info.task``.
TASK_PREDICT: dict[str, Callable[..., Any]] = {
    "segmentation": Predictor.predict_segmentation,
    "classification": predict_classification,
    "detection": predict_detection,
}
