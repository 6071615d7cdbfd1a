"""Image-level predictions: ``ClassificationResult`` (top-k labels and probabilities) for ``Predictor``."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ..errors import ConfigError, unknown
from ..io import ImageInput, image_name, read_image, save_text
from ..models.preprocess import Preprocess
from ..models.tta import TTA, classification_probs
from .backends import Runner, as_runner


@dataclass
class ClassificationResult:
    """One image's prediction: ``probs`` (C softmax probabilities over ``classes``), the top ``top_k``."""

    probs: torch.Tensor
    classes: list[str]
    name: str = "image"
    top_k: int = 5

    @property
    def label(self) -> str:
        """The most probable class."""
        return self.classes[int(self.probs.argmax())]

    @property
    def top(self) -> list[tuple[str, float]]:
        """The ``top_k`` most probable (label, probability) pairs, most probable first."""
        values, indices = self.probs.topk(min(self.top_k, len(self.classes)))
        return [(self.classes[i], float(v)) for v, i in zip(values.tolist(), indices.tolist())]

    @property
    def labels(self) -> list[str]:
        return [label for label, _ in self.top]

    def prob(self, name: str) -> float:
        """The probability of class ``name``."""
        if name not in self.classes:
            raise unknown("class", name, self.classes, "--class")
        return float(self.probs[self.classes.index(name)])

    def describe(self) -> str:
        """One line for the CLI: the top-k classes with their probabilities."""
        return ", ".join(f"{label} {p:.1%}" for label, p in self.top)

    def to_dict(self, classes: Sequence[str] = ()) -> dict[str, Any]:
        report: dict[str, Any] = {"image": self.name, "top_k": [{"label": label, "prob": round(p, 6)}
                                                               for label, p in self.top]}
        if classes:
            report["probs"] = {c: round(self.prob(c), 6) for c in classes}
        return report

    def save(self, out_dir: Union[str, os.PathLike], classes: Sequence[str] = (), json_report: bool = False,
             stem: Optional[str] = None) -> list[Path]:
        """With ``json_report``, write ``<stem>.json``: the top-k labels and probabilities (and those of
        ``classes``); the top-k is printed by the CLI either way, so nothing else is written."""
        for c in classes:
            self.prob(c)  # fail before writing anything
        if not json_report:
            return []
        path = Path(out_dir) / f"{stem or self.name}.json"
        return [save_text(json.dumps(self.to_dict(classes), indent=2) + "\n", path)]


@torch.inference_mode()
def predict(model: Union[nn.Module, Runner], preprocess: Preprocess, image: ImageInput, top_k: int = 5,
            tta: Optional[TTA] = None) -> ClassificationResult:
    """The weights' preprocessing (resize, centre crop, normalise) and ``model(batch).softmax(1)``, as
    torchvision's recipe; ``tta`` averages the softmax over flips and scales."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ConfigError(f"--top-k: expected a positive integer, got {top_k!r}")
    runner = as_runner(model)
    batch = preprocess(read_image(image)).unsqueeze(0)
    probs = runner(batch).float().softmax(dim=1) if tta is None else classification_probs(runner, batch, tta)
    return ClassificationResult(probs=probs[0].cpu(), classes=list(runner.classes), name=image_name(image), top_k=top_k)
