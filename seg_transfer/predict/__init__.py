"""Inference: ``Predictor`` turns images into each task's result (``SegmentationResult``,
``DetectionResult``, ``ClassificationResult``), which prints, draws and saves itself."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..io import ImageInput, resolve_device
from ..models.checkpoint import load_checkpoint
from ..models.tta import TTA
from ..transfer.sources import create_model
from . import classification, detection, segmentation
from .backends import BACKENDS, Runner, load_model_file, runner_for
from .classification import ClassificationResult
from .detection import DetectionResult
from .segmentation import SegmentationResult
from .tiling import DEFAULT_OVERLAP, check_tiling

# Each task's prediction, by ``model.info.task``: ``(model, preprocess, image, **options) -> result``.
TASK_PREDICT: dict[str, Callable[..., Any]] = {
    "segmentation": segmentation.predict,
    "classification": classification.predict,
    "detection": detection.predict,
}


class Predictor:
    """``Predictor("fcn_resnet50")``, ``Predictor(model)``, ``Predictor.from_checkpoint("best.pt")`` or
    ``Predictor.from_file("model.onnx")``; ``predict(image)`` accepts a path, PIL image, numpy array or tensor.

    ``backend``: ``torch`` (eager; ``fast=True`` folds BatchNorm and runs channels-last), ``onnxruntime`` or
    ``openvino`` (the model is exported to ONNX on the fly; the results API is the same). ``tile`` /
    ``overlap``: sliding-window inference (segmentation, detection); ``tta``: ``"flip"``,
    ``"flip,scales=0.75,1,1.25"`` or a ``TTA``.
    """

    def __init__(self, model: Union[str, nn.Module, Runner], device: Union[str, torch.device, None] = "cpu",
                 backend: str = "torch", fast: bool = False, tile: Optional[int] = None,
                 overlap: int = DEFAULT_OVERLAP, tta: Union[str, TTA, None] = None, **model_kwargs: Any) -> None:
        self.device = resolve_device(device)
        if isinstance(model, str):
            model = create_model(model, **model_kwargs)
        if isinstance(model, Runner):
            self.model: Optional[nn.Module] = None
            self.runner = model
        else:
            if not hasattr(model, "info"):
                raise ConfigError("Predictor needs a model built by seg_transfer (it carries classes and preprocessing)")
            self.model = model.to(self.device).eval()
            self.runner = runner_for(self.model, backend, fast=fast)
        self.classes: list[str] = list(self.runner.classes)
        self.preprocess = self.runner.meta.preprocess
        self.tta = TTA.parse(tta) if isinstance(tta, str) else tta
        self.tile, self.overlap = tile, overlap
        if tile:
            check_tiling(tile, overlap)
        if tile and self.task == "classification":
            raise ConfigError("--tile applies to segmentation and detection models, not classification")

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device: Union[str, torch.device, None] = "cpu",
                        **options: Any) -> Predictor:
        return cls(load_checkpoint(path), device=device, **options)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike], backend: str = "", device: Union[str, torch.device, None] = "cpu",
                  **options: Any) -> Predictor:
        """A model exported by ``seg-transfer export`` (.onnx or .torchscript): no config, no checkpoint."""
        return cls(load_model_file(path, backend, resolve_device(device)), device=device, **options)

    @property
    def backend(self) -> str:
        return self.runner.backend

    @property
    def task(self) -> str:
        return self.runner.meta.task

    @property
    def binary(self) -> bool:
        """A binary segmentation model: one sigmoid channel, its mask the foreground at a ``threshold``."""
        return self.runner.meta.binary

    def predict(self, image: ImageInput, **options: Any) -> Any:
        """One image's result, of the model's task (options: ``resize_to_input``, ``keep`` for segmentation,
        ``threshold`` for binary segmentation,
        ``score_threshold`` and ``classes`` for detection, ``top_k`` for classification; ``tile``,
        ``overlap`` and ``tta`` override the predictor's)."""
        if self.task not in TASK_PREDICT:
            raise ConfigError(f"Predictor: no predictions for task '{self.task}' (known: {', '.join(TASK_PREDICT)})")
        tta = options.pop("tta", self.tta)
        options["tta"] = TTA.parse(tta) if isinstance(tta, str) else tta
        if self.task != "classification":
            options.setdefault("tile", self.tile)
            options.setdefault("overlap", self.overlap)
        return TASK_PREDICT[self.task](self.runner, self.preprocess, image, **options)

    def predict_many(self, images: Iterable[ImageInput], **options: Any) -> Iterator[Any]:
        for image in images:
            yield self.predict(image, **options)


__all__ = ["BACKENDS", "TASK_PREDICT", "TTA", "ClassificationResult", "DetectionResult", "Predictor", "SegmentationResult",
           "load_checkpoint"]
