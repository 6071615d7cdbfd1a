"""The built-in training recipes as whole-batch operations on the training device (``augment.backend:
device``): the loader hands over decoded uint8 images (``data.cache: ram`` keeps them decoded), and one
call per batch scales, pads, crops and flips them on the GPU, where the albumentations path runs the
same steps one image at a time in the loader's worker processes.

Each recipe draws its random parameters on the CPU from a seeded ``torch.Generator`` (so a run is the
same on any device and resumes exactly) with the distributions of the albumentations steps it replaces:

- segmentation (``segmentation.default_train_spec``): scale ``U(0.5, 2.0)`` of the cached size
  (``RandomScale``: new side ``floor(side * s)``), centred padding to the crop (``PadIfNeeded``: image 0,
  mask the ignore index), crop offset ``floor(U(0, 1) * (padded - crop + 1))`` (``RandomCrop``), flip p=0.5;
- classification (``classification.default_train_spec``): torchvision's ``RandomResizedCrop`` box
  (scale 0.08-1 of the area, ratio 3/4-4/3, ten tries then a centre crop), flip p=0.5;
- detection: the horizontal and vertical flips its configs use, boxes flipped with the image.

Scaling and cropping are one ``grid_sample`` per batch: every output pixel maps to a point of its own
image (per-sample scale and offset, both axes separable), bilinear for images, nearest for masks at the
same point, so image and mask stay aligned exactly; points outside the scaled image are the padding.
torch's ``affine_grid``/``grid_sample`` are used rather than kornia's augmentation modules because those
draw their own parameters from other distributions (and want equal-sized inputs), while the point here
is to reproduce the CPU recipe's distributions on a batch of images of different sizes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.preprocess import Preprocess
from .detection import default_train_spec, target_tensors


@dataclass
class Canvas:
    """A batch of uint8 images of different sizes, each in the top-left corner of one tensor.

    ``images``: N x 3 x H x W uint8; ``sizes``: N x 2 (height, width) int64; ``masks`` (segmentation):
    N x H x W, the padding at the ignore index; ``labels`` (classification): N int64.
    """

    images: torch.Tensor
    sizes: torch.Tensor
    masks: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    targets: Optional[list[dict[str, Any]]] = None  # detection: each image's boxes, labels (numpy, as read)

    def __len__(self) -> int:
        return len(self.images)

    def to(self, device: torch.device, non_blocking: bool = False) -> Canvas:
        def move(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.to(device, non_blocking=non_blocking)
        # replace: every other field (detection's per-image targets) travels as it is
        return replace(self, images=self.images.to(device, non_blocking=non_blocking), masks=move(self.masks),
                       labels=move(self.labels))

    def pin_memory(self) -> Canvas:
        """DataLoader(pin_memory=True) pins a custom batch through this method."""
        def pin(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
            return None if t is None else t.pin_memory()
        return replace(self, images=self.images.pin_memory(), masks=pin(self.masks), labels=pin(self.labels))


def canvas_collate(items: Sequence[tuple[torch.Tensor, Any]], ignore_index: int = 255) -> Canvas:
    """(3xHxW uint8 image, label) items -> a ``Canvas`` on the images' device: HxW masks (segmentation),
    target dicts (detection, kept as read) or int labels (classification)."""
    images = [image for image, _ in items]
    sizes = torch.tensor([image.shape[-2:] for image in images], dtype=torch.int64)
    height, width = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    canvas = images[0].new_zeros((len(images), 3, height, width))
    for k, image in enumerate(images):
        canvas[k, :, :image.shape[-2], :image.shape[-1]] = image
    first = items[0][1]
    if isinstance(first, torch.Tensor) and first.dim() == 2:
        masks = first.new_full((len(items), height, width), ignore_index)
        for k, (_, mask) in enumerate(items):
            masks[k, :mask.shape[-2], :mask.shape[-1]] = mask
        return Canvas(canvas, sizes, masks=masks)
    if isinstance(first, dict):
        return Canvas(canvas, sizes, targets=[target for _, target in items])
    return Canvas(canvas, sizes, labels=torch.tensor([int(label) for _, label in items], dtype=torch.int64,
                                                     device=canvas.device))


# ------------------------------------------------------------------------------ random parameters
@dataclass
class Windows:
    """Per sample, the window of its image that fills the output: source rows ``top + (v + 0.5) * step_y - 0.5``
    for output rows v (the same for columns); ``valid_*``: output rows/columns inside the scaled image
    (outside: padding); ``flip``: mirrored left-right."""

    top: torch.Tensor
    left: torch.Tensor
    step_y: torch.Tensor
    step_x: torch.Tensor
    valid_y: tuple[torch.Tensor, torch.Tensor]  # [first, end) output row inside the image
    valid_x: tuple[torch.Tensor, torch.Tensor]
    flip: torch.Tensor


@dataclass
class ScaleCrop:
    """Segmentation's random parameters per sample: the scale factor, the crop's top-left corner in the
    padded scaled image, and the flip (what albumentations' ReplayCompose records for the same steps)."""

    scale: torch.Tensor
    top: torch.Tensor
    left: torch.Tensor
    flip: torch.Tensor


def draw_scale_crop(sizes: torch.Tensor, crop: int, generator: torch.Generator,
                    scale: tuple[float, float] = (0.5, 2.0), flip: float = 0.5) -> ScaleCrop:
    """``RandomScale`` (``U(scale)``), centred ``PadIfNeeded`` to ``crop``, ``RandomCrop``'s corner
    ``floor(U(0, 1) * (padded - crop + 1))`` (the last position included), ``HorizontalFlip``."""
    n = len(sizes)
    s = torch.empty(n, dtype=torch.float64).uniform_(*scale, generator=generator)
    hs, ws = scaled(sizes, s)
    u = torch.rand(n, 2, dtype=torch.float64, generator=generator)
    top = torch.floor(u[:, 0] * (hs.clamp(min=crop) - crop + 1))
    left = torch.floor(u[:, 1] * (ws.clamp(min=crop) - crop + 1))
    return ScaleCrop(s, top, left, torch.rand(n, generator=generator) < flip)


def scaled(sizes: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's size after ``RandomScale(s)``: ``floor(side * s)``, as albumentations' ``scale``."""
    h, w = sizes[:, 0].double(), sizes[:, 1].double()
    return torch.floor(h * s).clamp(min=1), torch.floor(w * s).clamp(min=1)


def scale_crop_windows(sizes: torch.Tensor, crop: int, p: ScaleCrop) -> Windows:
    """Where each output pixel of ``p``'s scale, pad and crop comes from."""
    h, w = sizes[:, 0].double(), sizes[:, 1].double()
    hs, ws = scaled(sizes, p.scale)
    pad_top = torch.div(hs.clamp(min=crop) - hs, 2, rounding_mode="floor")
    pad_left = torch.div(ws.clamp(min=crop) - ws, 2, rounding_mode="floor")
    # output row v is row v + top - pad_top of the scaled image, whose row r comes from (r + 0.5) * h / hs - 0.5
    step_y, step_x = h / hs, w / ws
    return Windows(top=(p.top - pad_top) * step_y, left=(p.left - pad_left) * step_x, step_y=step_y, step_x=step_x,
                   valid_y=(pad_top - p.top, pad_top - p.top + hs), valid_x=(pad_left - p.left, pad_left - p.left + ws),
                   flip=p.flip)


def resized_crop_boxes(sizes: torch.Tensor, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """torchvision's ``RandomResizedCrop.get_params`` for each (h, w): N x 4 (top, left, height, width)."""
    boxes = []
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for h, w in sizes.tolist():
        area = h * w
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*scale, generator=generator).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio, generator=generator).item())
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                i = int(torch.randint(0, h - ch + 1, (1,), generator=generator))
                j = int(torch.randint(0, w - cw + 1, (1,), generator=generator))
                boxes.append((i, j, ch, cw))
                break
        else:  # centre crop at the nearest allowed ratio
            in_ratio = w / h
            cw, ch = ((w, int(round(w / ratio[0]))) if in_ratio < ratio[0] else
                      (int(round(h * ratio[1])), h) if in_ratio > ratio[1] else (w, h))
            boxes.append(((h - ch) // 2, (w - cw) // 2, ch, cw))
    return torch.tensor(boxes, dtype=torch.float64)


def resized_crop(sizes: torch.Tensor, size: int, generator: torch.Generator, flip: float = 0.5,
                 scale: tuple[float, float] = (0.08, 1.0)) -> Windows:
    """Classification's ``RandomResizedCrop`` to ``size`` (``scale``: the share of the area) + ``HorizontalFlip``."""
    box = resized_crop_boxes(sizes, generator, scale)
    flips = torch.rand(len(sizes), generator=generator) < flip
    full = (torch.zeros(len(sizes), dtype=torch.float64), torch.full((len(sizes),), float(size), dtype=torch.float64))
    return Windows(top=box[:, 0], left=box[:, 1], step_y=box[:, 2] / size, step_x=box[:, 3] / size,
                   valid_y=full, valid_x=full, flip=flips)


# ------------------------------------------------------------------------------------- sampling
def _axis(start: torch.Tensor, step: torch.Tensor, out: int, extent: int, length: torch.Tensor,
          flip: Optional[torch.Tensor], device: torch.device) -> torch.Tensor:
    """N x out grid coordinates (align_corners=False) on a canvas axis of ``extent`` pixels; the source
    point of output index o is ``start + (o + 0.5) * step - 0.5``, clamped into the sample's ``length``
    (cv2's replicated border), mirrored where ``flip``."""
    o = torch.arange(out, dtype=torch.float64, device=device)[None, :]
    if flip is not None:
        o = torch.where(flip.to(device)[:, None], out - 1 - o, o)
    src = start.to(device)[:, None] + (o + 0.5) * step.to(device)[:, None] - 0.5
    src = torch.minimum(src.clamp(min=0), (length.to(device).double() - 1)[:, None])
    return ((2 * src + 1) / extent - 1).float()


def _inside(valid: tuple[torch.Tensor, torch.Tensor], out: int, flip: Optional[torch.Tensor],
            device: torch.device) -> torch.Tensor:
    o = torch.arange(out, dtype=torch.float64, device=device)[None, :]
    if flip is not None:
        o = torch.where(flip.to(device)[:, None], out - 1 - o, o)
    return (o >= valid[0].to(device)[:, None]) & (o < valid[1].to(device)[:, None])


def sample(canvas: Canvas, windows: Windows, out: int) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
    """(N x 3 x out x out float images in [0, 255], N x out x out masks or None, N x out x out inside-mask)."""
    device = canvas.images.device
    n, _, height, width = canvas.images.shape
    gy = _axis(windows.top, windows.step_y, out, height, canvas.sizes[:, 0], None, device)
    gx = _axis(windows.left, windows.step_x, out, width, canvas.sizes[:, 1], windows.flip, device)
    grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)
    images = F.grid_sample(canvas.images.float(), grid, mode="bilinear", align_corners=False)
    inside = _inside(windows.valid_y, out, None, device)[:, :, None] & \
        _inside(windows.valid_x, out, windows.flip, device)[:, None, :]
    masks = None
    if canvas.masks is not None:
        masks = F.grid_sample(canvas.masks[:, None].float(), grid, mode="nearest", align_corners=False)[:, 0]
    return images, masks, inside


# ------------------------------------------------------------------------------------- recipes
class SegmentationBatchAugment:
    """``segmentation.default_train_spec`` on a Canvas (cached at the resized size): normalised float
    images N x 3 x crop x crop and int64 masks, padding at 0 (image, before normalising) and ``ignore_index``."""

    def __init__(self, crop: int, preprocess: Preprocess, ignore_index: int = 255,
                 scale: tuple[float, float] = (0.5, 2.0), flip: float = 0.5):
        self.crop, self.ignore_index, self.scale, self.flip = crop, ignore_index, scale, flip
        self.mean, self.std = preprocess.mean, preprocess.std

    def draw(self, sizes: torch.Tensor, generator: torch.Generator) -> ScaleCrop:
        return draw_scale_crop(sizes, self.crop, generator, self.scale, self.flip)

    def __call__(self, canvas: Canvas, generator: torch.Generator,
                 params: Optional[ScaleCrop] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``params`` (else drawn from ``generator``): the random parameters to apply."""
        params = params or self.draw(canvas.sizes, generator)
        images, masks, inside = sample(canvas, scale_crop_windows(canvas.sizes, self.crop, params), self.crop)
        assert masks is not None, "segmentation canvases carry masks"
        images = images * inside[:, None]
        masks = torch.where(inside, masks, float(self.ignore_index)).long()
        return normalise(images, self.mean, self.std), masks


class ClassificationBatchAugment:
    """``classification.default_train_spec`` on a Canvas: normalised N x 3 x size x size and the labels."""

    def __init__(self, size: int, preprocess: Preprocess, flip: float = 0.5):
        self.size, self.flip = size, flip
        self.mean, self.std = preprocess.mean, preprocess.std

    def windows(self, sizes: torch.Tensor, generator: torch.Generator) -> Windows:
        return resized_crop(sizes, self.size, generator, self.flip)

    def __call__(self, canvas: Canvas, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        images, _, _ = sample(canvas, self.windows(canvas.sizes, generator), self.size)
        assert canvas.labels is not None, "classification canvases carry labels"
        return normalise(images, self.mean, self.std), canvas.labels


def normalise(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """[0, 255] float images -> (x / 255 - mean) / std, as ``Preprocess`` does."""
    m = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1) * 255
    return (images - m) / s


FLIPS = {"HorizontalFlip": 0, "VerticalFlip": 1}


def detection_flips(spec: Optional[Sequence[Any]]) -> Optional[tuple[float, float]]:
    """(horizontal, vertical) flip probabilities of a detection ``augment.train`` list made of flips only
    (None: ``detection.default_train_spec``); None when it names any other step."""
    if spec is None:
        spec = default_train_spec()
    p = [0.0, 0.0]
    for step in spec:
        if not isinstance(step, dict) or step.get("name") not in FLIPS or set(step) - {"name", "p"}:
            return None
        p[FLIPS[step["name"]]] = float(step.get("p", 0.5))
    return p[0], p[1]


def box_target(target: dict[str, Any], size: Sequence[int], device: torch.device) -> dict[str, torch.Tensor]:
    """A box dataset's raw target for an image of ``size`` (H, W) as ``detection.BoxTransform`` gives it
    with no geometric step (boxes clipped to the image, those under 1 pixel dropped), on ``device``."""
    height, width = (int(v) for v in size)
    boxes = np.asarray(target["boxes"], dtype=np.float32).reshape(-1, 4).copy()
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)  # albumentations' BboxParams(clip=True)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    out = target_tensors(target, boxes, np.arange(len(boxes)), target.get("masks"), (height, width))
    return {k: v.to(device) for k, v in out.items()}


class DetectionBatchAugment:
    """The flips of a detection config (``HorizontalFlip``, ``VerticalFlip`` with their p) on a Canvas of
    images and their targets: a list of float images in [0, 1] (each at its own size, on the canvas's
    device) and target dicts of tensors there, boxes (and instance masks) flipped with their image."""

    def __init__(self, horizontal: float = 0.5, vertical: float = 0.0):
        self.horizontal, self.vertical = horizontal, vertical

    def __call__(self, canvas: Canvas, generator: torch.Generator
                 ) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        assert canvas.targets is not None, "detection canvases carry targets"
        device = canvas.images.device
        images = [canvas.images[k, :, :h, :w] for k, (h, w) in enumerate(canvas.sizes.tolist())]
        targets = [box_target(t, image.shape[-2:], device) for t, image in zip(canvas.targets, images)]
        return self.flip(images, targets, generator)

    def flip(self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, torch.Tensor]],
             generator: torch.Generator) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
        draws = torch.rand(len(images), 2, generator=generator)
        out_images, out_targets = [], []
        for image, target, (dh, dv) in zip(images, targets, draws.tolist()):
            image = image.float() / 255
            target = dict(target)
            h, w = image.shape[-2:]
            boxes = target["boxes"].float().clone().reshape(-1, 4)
            if dh < self.horizontal:
                image = image.flip(-1)
                boxes[:, [0, 2]] = w - boxes[:, [2, 0]]
                if "masks" in target:
                    target["masks"] = target["masks"].flip(-1)
            if dv < self.vertical:
                image = image.flip(-2)
                boxes[:, [1, 3]] = h - boxes[:, [3, 1]]
                if "masks" in target:
                    target["masks"] = target["masks"].flip(-2)
            target["boxes"] = boxes
            out_images.append(image)
            out_targets.append(target)
        return out_images, out_targets
