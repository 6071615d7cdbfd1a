"""Two random views of every image of a batch, made on the training device in one pass per view: a
``RandomResizedCrop`` of at least ``min_scale`` of the image and a flip (``data.device_augment``'s
windows and ``grid_sample``), then SimCLR's colour distortion (brightness, contrast, saturation jitter
with p=0.8, grayscale with p=``grayscale``). Gaussian blur is left out: at the 64-160 px crops that fit
a CPU or a small GPU it erases what there is to learn (SimCLR's CIFAR recipe leaves it out too).

Each view keeps its ``Windows``: where every output pixel came from in the source image, which is what
the dense methods need to pair feature-map cells of two views that see the same point (``cell_points``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...data.device_augment import Canvas, Windows, normalise, resized_crop, sample

GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


@dataclass
class View:
    """One view of a batch: normalised N x 3 x S x S images and where their pixels came from."""

    images: torch.Tensor
    windows: Windows


def gray(images: torch.Tensor) -> torch.Tensor:
    """N x 3 x H x W in [0, 1] -> N x 1 x H x W luma."""
    w = torch.tensor(GRAY, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True)


def colour(images: torch.Tensor, generator: torch.Generator, strength: float, p_gray: float,
           p_jitter: float = 0.8) -> torch.Tensor:
    """Per-sample brightness, contrast and saturation factors in ``[1 - strength, 1 + strength]`` (applied
    with ``p_jitter``), then grayscale with ``p_gray``; images in [0, 1], drawn on the CPU ``generator``."""
    n = len(images)
    draws = torch.rand(n, 5, generator=generator)
    factors = (1 - strength + 2 * strength * draws[:, :3]).to(images.device, images.dtype)
    on = (draws[:, 3] < p_jitter).to(images.device)
    bright, contrast, sat = (torch.where(on, f, torch.ones_like(f)).view(n, 1, 1, 1) for f in factors.T)
    x = (images * bright).clamp(0, 1)
    mean = gray(x).mean((2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean).clamp(0, 1)
    g = gray(x)
    x = ((x - g) * sat + g).clamp(0, 1)
    to_gray = (draws[:, 4] < p_gray).to(images.device).view(n, 1, 1, 1)
    return torch.where(to_gray, gray(x).expand_as(x), x)


class TwoViews:
    """``(view1, view2)`` of a Canvas: the augmentation every method of ``methods.METHODS`` trains on."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float], min_scale: float = 0.2,
                 strength: float = 0.4, p_gray: float = 0.2) -> None:
        self.size, self.mean, self.std = size, mean, std
        self.min_scale, self.strength, self.p_gray = min_scale, strength, p_gray

    def view(self, canvas: Canvas, generator: torch.Generator) -> View:
        windows = resized_crop(canvas.sizes, self.size, generator, scale=(self.min_scale, 1.0))
        images, _, _ = sample(canvas, windows, self.size)
        images = colour(images / 255, generator, self.strength, self.p_gray)
        return View(normalise(images * 255, self.mean, self.std), windows)

    def __call__(self, canvas: Canvas, generator: torch.Generator) -> tuple[View, View]:
        return self.view(canvas, generator), self.view(canvas, generator)


def cell_points(windows: Windows, size: int, grid: int) -> torch.Tensor:
    """N x grid x grid x 3: for each cell of a view's ``grid`` x ``grid`` feature map, the source-image
    point (y, x) its centre sees, and (last channel) the cell's side in source pixels (its diagonal
    measure for the dense methods' distance threshold)."""
    o = (torch.arange(grid, dtype=torch.float64) + 0.5) * size / grid - 0.5  # cell centres, output pixels
    ys = windows.top[:, None] + (o[None, :] + 0.5) * windows.step_y[:, None] - 0.5
    ox = torch.where(windows.flip[:, None], size - 1 - o[None, :], o[None, :])
    xs = windows.left[:, None] + (ox + 0.5) * windows.step_x[:, None] - 0.5
    n = len(ys)
    side = (size / grid) * torch.sqrt(windows.step_y * windows.step_x)
    return torch.stack([ys[:, :, None].expand(n, grid, grid), xs[:, None, :].expand(n, grid, grid),
                        side[:, None, None].expand(n, grid, grid)], dim=-1).float()
