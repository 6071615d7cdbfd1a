"""The strong view of self-training: photometric changes and a cutout applied on the training device to a
batch of weak views (normalised images), so that the geometry stays the weak view's and a pseudo-label
from the weak view fits the strong one pixel for pixel. The mix is FixMatch's / UniMatch's for
segmentation: colour jitter (p 0.8), greyscale (p 0.2), Gaussian blur (p 0.5), one cutout box (p 0.5);
torchvision's functional ops do the work. Draws come from a CPU generator: reproducible on any device."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torchvision.transforms.v2.functional as TF


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _chance(generator: torch.Generator, p: float) -> bool:
    return float(torch.rand((), generator=generator)) < p


class StrongAugment:
    """``(images N x 3 x H x W normalised by mean/std, generator) -> (strong images, kept N x H x W bool)``:
    ``kept`` is False inside the cutout box (those pixels carry no pseudo-label)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], jitter: float = 0.5,
                 cutout: tuple[float, float] = (0.02, 0.4)) -> None:
        self.mean, self.std = list(mean), list(std)
        self.jitter, self.cutout = jitter, cutout

    def one(self, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One image in [0, 1] -> its strong view and the kept pixels."""
        j = self.jitter
        if _chance(generator, 0.8):
            image = TF.adjust_brightness(image, _uniform(generator, 1 - j, 1 + j))
            image = TF.adjust_contrast(image, _uniform(generator, 1 - j, 1 + j))
            image = TF.adjust_saturation(image, _uniform(generator, 1 - j, 1 + j))
        if _chance(generator, 0.2):
            image = TF.rgb_to_grayscale(image, num_output_channels=3)
        if _chance(generator, 0.5):
            sigma = _uniform(generator, 0.1, 2.0)
            image = TF.gaussian_blur(image, [2 * math.ceil(2 * sigma) + 1] * 2, [sigma, sigma])
        kept = torch.ones(image.shape[-2:], dtype=torch.bool, device=image.device)
        if _chance(generator, 0.5):
            h, w = image.shape[-2:]
            area = _uniform(generator, *self.cutout) * h * w
            ratio = math.exp(_uniform(generator, math.log(0.3), math.log(1 / 0.3)))
            bh, bw = min(h, max(1, round(math.sqrt(area * ratio)))), min(w, max(1, round(math.sqrt(area / ratio))))
            y = int(torch.randint(0, h - bh + 1, (), generator=generator))
            x = int(torch.randint(0, w - bw + 1, (), generator=generator))
            image = image.clone()
            image[:, y:y + bh, x:x + bw] = 0.5  # grey in [0, 1]: the mean-ish colour, as cutout fills
            kept[y:y + bh, x:x + bw] = False
        return image, kept

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.mean, device=images.device, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, device=images.device, dtype=torch.float32).view(3, 1, 1)
        views, kept = [], []
        for image in images.float():
            view, keep = self.one((image * std + mean).clamp(0, 1), generator)
            views.append((view - mean) / std)
            kept.append(keep)
        out = torch.stack(views).to(images.dtype)
        if images.is_contiguous(memory_format=torch.channels_last):
            out = out.contiguous(memory_format=torch.channels_last)
        return out, torch.stack(kept)
