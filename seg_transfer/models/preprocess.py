"""Input preprocessing read off torchvision weights' ``transforms()``: resize, scale to [0, 1], normalise."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch
import torchvision.transforms.functional as TF
from torch import nn
from torchvision.transforms import InterpolationMode


@dataclass(frozen=True)
class Preprocess:
    """What a model expects of its input; stored in checkpoints so inference cannot mismatch it.

    ``resize_size`` is the shorter side in pixels (``None``: keep the input size), as in
    torchvision's ``SemanticSegmentation`` preset; mean/std come from the weights, never typed.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize_size: Optional[int] = None
    interpolation: str = "bilinear"
    antialias: bool = True
    crop_size: Optional[int] = None  # centre crop after resizing (classification presets); None: no crop

    @classmethod
    def from_transforms(cls, transforms: Any, resize_size: Optional[int] = None) -> Preprocess:
        """Read a torchvision preset (``weights.transforms()``); ``resize_size``: None keeps the
        preset's, 0 disables resizing, N resizes the shorter side to N."""
        preset_size = getattr(transforms, "resize_size", None)
        if isinstance(preset_size, (list, tuple)):
            preset_size = preset_size[0]
        return cls(
            mean=tuple(float(m) for m in transforms.mean),
            std=tuple(float(s) for s in transforms.std),
            resize_size=preset_size if resize_size is None else (resize_size or None),
            interpolation=InterpolationMode(transforms.interpolation).value,
            antialias=bool(getattr(transforms, "antialias", True)),
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (or float in [0, 1]) image tensor ``[..., 3, H, W]`` -> normalised float tensor."""
        if self.resize_size is not None:
            image = TF.resize(image, [self.resize_size],
                              interpolation=InterpolationMode(self.interpolation),
                              antialias=self.antialias)
        if self.crop_size is not None:
            image = TF.center_crop(image, [self.crop_size])
        image = TF.convert_image_dtype(image, torch.float)
        if all(m == 0.0 for m in self.mean) and all(s == 1.0 for s in self.std):
            return image  # detectors normalise inside the model: skip an identity pass over the image
        return TF.normalize(image, mean=list(self.mean), std=list(self.std))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocess:
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})


# What every model builder returns: the model, its preprocessing and its class names.
Built = tuple[nn.Module, Preprocess, list[str]]
