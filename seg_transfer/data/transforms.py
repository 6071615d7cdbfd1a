"""Augmentation pipelines from YAML lists of albumentations transforms, shared by every task.

A pipeline is declared as ``[{name: HorizontalFlip, p: 0.5}, {name: RandomScale, scale_limit: [-0.5, 1.0]}]``.
Steps work on uint8 arrays; each task's transform (segmentation.py, detection.py, classification.py) runs
the pipeline and then its own last step (the weights' ``Preprocess`` mean/std, or a plain scale to [0, 1]).
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from ..errors import ConfigError, suggest

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


def _arguments(cls: type[Any]) -> Optional[list[str]]:
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


def all_steps(compose: Any) -> list[Any]:
    """The compose and every transform/compose inside it, depth first."""
    steps = [compose]
    for t in getattr(compose, "transforms", []):
        steps.extend(all_steps(t))
    return steps


def reseed(pipeline: Any, seed: int) -> None:
    """Seed every step of ``pipeline`` independently from ``seed`` (albumentations' own set_random_seed
    gives all steps the same seed, which correlates e.g. the flip and the crop drawn for one image)."""
    steps = all_steps(pipeline)
    for step, child in zip(steps, np.random.SeedSequence(seed).spawn(len(steps))):
        step.set_random_seed(int(child.generate_state(1)[0]))
