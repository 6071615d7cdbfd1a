"""Inference: ``Predictor`` turns images into each task's result (``SegmentationResult``,
``DetectionResult``, ``ClassificationResult``), which prints, draws and saves itself."""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..io import ImageInput, resolve_device
from ..models.build import model_info
from ..models.checkpoint import load_checkpoint
from ..transfer.sources import create_model
from . import classification, detection, segmentation
from .classification import ClassificationResult
from .detection import DetectionResult
from .segmentation import SegmentationResult

# Each task's prediction, by ``model.info.task``: ``(model, preprocess, image, **options) -> result``.
TASK_PREDICT: dict[str, Callable[..., Any]] = {
    "segmentation": segmentation.predict,
    "classification": classification.predict,
    "detection": detection.predict,
}


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
        info = model_info(model)
        self.classes: list[str] = list(info.classes)
        self.preprocess = info.preprocess

    @classmethod
    def from_checkpoint(cls, path: Union[str, os.PathLike], device: Union[str, torch.device, None] = "cpu"
                        ) -> Predictor:
        return cls(load_checkpoint(path), device=device)

    @property
    def task(self) -> str:
        return str(model_info(self.model).task)

    def predict(self, image: ImageInput, **options: Any) -> Any:
        """One image's result, of the model's task (options: ``resize_to_input`` for segmentation,
        ``score_threshold`` and ``classes`` for detection, ``top_k`` for classification)."""
        if self.task not in TASK_PREDICT:
            raise ConfigError(f"Predictor: no predictions for task '{self.task}' (known: {', '.join(TASK_PREDICT)})")
        return TASK_PREDICT[self.task](self.model, self.preprocess, image, **options)

    def predict_many(self, images: Iterable[ImageInput], **options: Any) -> Iterator[Any]:
        for image in images:
            yield self.predict(image, **options)


__all__ = ["TASK_PREDICT", "ClassificationResult", "DetectionResult", "Predictor", "SegmentationResult",
           "load_checkpoint"]
