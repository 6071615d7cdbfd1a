"""Joint image/mask augmentation from YAML lists of albumentations transforms, then the model's normalisation.

A pipeline is declared as ``[{name: HorizontalFlip, p: 0.5}, {name: RandomScale, scale_limit: [-0.5, 1.0]}]``.
Transforms work on uint8 arrays; the last step is always the weights' ``Preprocess`` mean/std, never typed.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError, suggest
from ..models.preprocess import Preprocess

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # its import otherwise asks PyPI for a newer version
import albumentations as A  # noqa: E402

# Argument that sets the mask's fill on padding/affine transforms: albumentations 2.x name, then 1.x name.
MASK_FILL_ARGS = ("fill_mask", "mask_value")
# Steps that belong to the model's Preprocess, or that break the uint8 contract.
NOT_IN_PIPELINE = ("Normalize", "ToFloat", "FromFloat", "ToTensorV2")
# Readable spellings of OpenCV flags, so YAML need not hold magic numbers.
CV2_NAMES = {
    "interpolation": {"nearest": 0, "linear": 1, "cubic": 2, "area": 3, "lanczos4": 4},
    "border_mode": {"constant": 0, "replicate": 1, "reflect": 2, "wrap": 3, "reflect_101": 4},
}
CV2_NAMES["mask_interpolation"] = CV2_NAMES["interpolation"]


def transform_names() -> list[str]:
    """Every albumentations transform and composition that a pipeline may name."""
    return sorted(n for n in dir(A) if isinstance(getattr(A, n), type)
                  and issubclass(getattr(A, n), (A.BasicTransform, A.BaseCompose)))


def _arguments(cls: type) -> Optional[list[str]]:
    params = inspect.signature(cls.__init__).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None  # it takes anything; albumentations checks the values itself
    return [p.name for p in params if p.name != "self" and p.kind is not p.VAR_POSITIONAL]


def _explain(err: Exception) -> str:
    """A pydantic validation error as 'key: reason (got value); ...' rather than its multi-line report."""
    cause = err.__cause__ or err.__context__  # albumentations re-raises pydantic's error as a ValueError
    errors = getattr(err, "errors", None) or getattr(cause, "errors", None)
    if not callable(errors):
        return str(err).splitlines()[0]
    parts = []
    for e in errors():
        key = ".".join(map(str, e.get("loc", ())[:1])) or "arguments"
        parts.append(f"{key}: required" if e.get("type") == "missing"
                     else f"{key}: {e.get('msg')} (got {e.get('input')!r})")
    return "; ".join(parts)


def build_step(entry: Mapping[str, Any], ignore_index: int = 255, where: str = "transforms[0]") -> Any:
    """One ``{name: ..., **arguments}`` entry -> an albumentations transform (mask fill = ignore index)."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"{where}: expected a mapping with a 'name', e.g. {{name: HorizontalFlip, p: 0.5}}; "
                          f"got {entry!r}")
    args = dict(entry)
    name = args.pop("name")
    cls = getattr(A, name, None)
    if not (isinstance(cls, type) and issubclass(cls, (A.BasicTransform, A.BaseCompose))):
        raise ConfigError(f"{where}: unknown albumentations transform '{name}'{suggest(name, transform_names())}")
    if name in NOT_IN_PIPELINE:
        raise ConfigError(f"{where}: {name} does not belong in the pipeline: the model's weights fix the "
                          "normalisation and it is applied after the last transform")
    valid = _arguments(cls)
    for key in args:
        if valid is not None and key not in valid:
            raise ConfigError(f"{where} ({name}): unknown argument '{key}'{suggest(key, valid)}; "
                              f"valid: {', '.join(valid)}")
        if key in CV2_NAMES and isinstance(args[key], str):
            choices = CV2_NAMES[key]
            if args[key] not in choices:
                raise ConfigError(f"{where} ({name}): {key} '{args[key]}'{suggest(args[key], choices)}; "
                                  f"valid: {', '.join(choices)} or an OpenCV flag value")
            args[key] = choices[args[key]]
    if issubclass(cls, A.BaseCompose):
        inner = args.get("transforms")
        if not isinstance(inner, list):
            raise ConfigError(f"{where} ({name}): 'transforms' must be a list of transforms")
        args["transforms"] = [build_step(e, ignore_index, f"{where}.transforms[{j}]") for j, e in enumerate(inner)]
    for key in MASK_FILL_ARGS:
        if valid is not None and key in valid and key not in args:
            args[key] = ignore_index  # padded or rotated-in mask pixels must not count as any class
    try:
        return cls(**args)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{where} ({name}): {_explain(err)}") from None


def build_pipeline(spec: Sequence[Mapping[str, Any]], ignore_index: int = 255,
                   where: str = "transforms") -> A.Compose:
    """A YAML list of steps -> albumentations Compose that moves image and mask together."""
    if isinstance(spec, (str, Mapping)) or not isinstance(spec, Sequence):
        raise ConfigError(f"{where}: expected a list of transforms, got {spec!r}")
    return A.Compose([build_step(e, ignore_index, f"{where}[{i}]") for i, e in enumerate(spec)])


def default_train_spec(crop_size: int, resize_size: Optional[int] = None) -> list[dict[str, Any]]:
    """Shorter side to ``resize_size`` (if any), random scale 0.5-2.0, pad (mask: ignore), crop, h-flip."""
    resize = [{"name": "SmallestMaxSize", "max_size": resize_size}] if resize_size else []
    return resize + [
        {"name": "RandomScale", "scale_limit": [-0.5, 1.0], "p": 1.0},  # albumentations adds 1: 0.5x-2.0x
        {"name": "PadIfNeeded", "min_height": crop_size, "min_width": crop_size, "border_mode": "constant"},
        {"name": "RandomCrop", "height": crop_size, "width": crop_size},
        {"name": "HorizontalFlip", "p": 0.5},
    ]


def default_val_spec(resize_size: Optional[int] = None) -> list[dict[str, Any]]:
    """Shorter side to ``resize_size``, as at inference; no step at all when it is None."""
    return [{"name": "SmallestMaxSize", "max_size": resize_size}] if resize_size else []


def _compact(mask: np.ndarray, ignore_index: int) -> np.ndarray:
    """The smallest dtype OpenCV handles that holds every label and the ignore index (int64 it does not)."""
    lo = min(int(mask.min()) if mask.size else 0, ignore_index)
    hi = max(int(mask.max()) if mask.size else 0, ignore_index)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return mask.astype(dtype, copy=False)
    raise ValueError(f"mask values {lo}..{hi} do not fit in int32")


def _all_steps(compose: Any) -> list[Any]:
    """The compose and every transform/compose inside it, depth first."""
    steps = [compose]
    for t in getattr(compose, "transforms", []):
        steps.extend(_all_steps(t))
    return steps


class SegTransform:
    """(uint8 HxWx3 image, integer HxW mask) -> (normalised float 3xHxW tensor, int64 HxW tensor)."""

    def __init__(self, pipeline: A.Compose, preprocess: Preprocess, ignore_index: int = 255):
        self.pipeline = pipeline
        # Only mean/std: resizing is the pipeline's job, and must move the mask along with the image.
        self.normalize = dataclasses.replace(preprocess, resize_size=None)
        self.ignore_index = ignore_index

    def reseed(self, seed: int) -> None:
        """Seed every step independently (albumentations' own set_random_seed gives all steps the
        same seed, which correlates e.g. the flip and the crop drawn for one image)."""
        steps = _all_steps(self.pipeline)
        for step, child in zip(steps, np.random.SeedSequence(seed).spawn(len(steps))):
            step.set_random_seed(int(child.generate_state(1)[0]))

    def __call__(self, image: np.ndarray, mask: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.pipeline(image=image, mask=_compact(mask, self.ignore_index))
        img = torch.from_numpy(np.ascontiguousarray(out["image"])).permute(2, 0, 1)
        return self.normalize(img), torch.from_numpy(np.ascontiguousarray(out["mask"])).long()

    def __repr__(self) -> str:
        return f"SegTransform({self.pipeline!r}, {self.normalize!r})"


def build_transforms(train: Optional[Sequence[Mapping[str, Any]]] = None,
                     val: Optional[Sequence[Mapping[str, Any]]] = None, crop_size: int = 480, *,
                     preprocess: Preprocess, ignore_index: int = 255) -> tuple[SegTransform, SegTransform]:
    """A ``transforms:`` block (``train``/``val`` step lists, ``crop_size``) -> (train, val) SegTransforms.

    Missing lists get the defaults of ``default_train_spec`` / ``default_val_spec``, sized from
    ``preprocess.resize_size``; ``preprocess`` comes from the model's weights.
    """
    if not isinstance(crop_size, int) or isinstance(crop_size, bool) or crop_size < 1:
        raise ConfigError(f"augment.crop_size: expected a positive integer, got {crop_size!r}")
    train_spec = default_train_spec(crop_size, preprocess.resize_size) if train is None else train
    val_spec = default_val_spec(preprocess.resize_size) if val is None else val
    return (SegTransform(build_pipeline(train_spec, ignore_index, "augment.train"), preprocess, ignore_index),
            SegTransform(build_pipeline(val_spec, ignore_index, "augment.val"), preprocess, ignore_index))


class SegCollate:
    """Batches (image, mask) pairs: stacks equal sizes, else pads bottom/right (image 0, mask ignore).

    Fixed-size train crops stack as they are; variable-size val images pad to the batch's largest
    (a 0 in a normalised image is the dataset mean) or use batch size 1.
    """

    def __init__(self, ignore_index: int = 255):
        self.ignore_index = ignore_index

    def __call__(self, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        images, masks = zip(*batch)
        if len({tuple(m.shape) for m in masks}) == 1 and len({tuple(i.shape) for i in images}) == 1:
            return torch.stack(images), torch.stack(masks)
        height = max(i.shape[-2] for i in images)
        width = max(i.shape[-1] for i in images)
        out_images = images[0].new_zeros((len(images), images[0].shape[0], height, width))
        out_masks = masks[0].new_full((len(masks), height, width), self.ignore_index)
        for k, (image, mask) in enumerate(zip(images, masks)):
            out_images[k, :, :image.shape[-2], :image.shape[-1]] = image
            out_masks[k, :mask.shape[-2], :mask.shape[-1]] = mask
        return out_images, out_masks
