"""The plain reference recipes, one module per task, the way torchvision keeps one ``presets.py`` +
``train.py`` per task under ``references/``: what a user would write with torchvision alone, so that every
benchmark measures the engine against the same loop.

- ``segmentation``: ``references/segmentation`` (presets, classifier re-created, SGD + poly, CE with ignore)
- ``classification``: PyTorch's transfer-learning tutorial ("finetuning the ConvNet")
- ``detection``: torchvision's detection fine-tuning tutorial / ``references/detection`` (Faster R-CNN)

Each module has ``train_and_score(cfg, run_dir, progress) -> Outcome``: one run from a seg_transfer
config, scored by the engine's own meter, its epochs (seconds, seconds waiting for data, loss) written to
``run_dir/plain.json``. ``common`` holds what the three share (seeding, the timed epoch, the output).
"""
from __future__ import annotations

from typing import Any, Callable

from . import classification, detection, segmentation

RUNNERS: dict[str, Callable[..., Any]] = {"segmentation": segmentation.train_and_score,
                                          "classification": classification.train_and_score,
                                          "detection": detection.train_and_score}
