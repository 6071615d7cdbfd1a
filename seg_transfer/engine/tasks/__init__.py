"""What the one engine needs to know about each task, by name (``model.info.task`` picks one)."""
from __future__ import annotations

from typing import Callable

from ...errors import unknown
from ..metrics.base import Meter
from .base import Task
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import segmentation_task

TASKS: dict[str, Callable[..., Task]] = {
    "segmentation": segmentation_task,  # SegmentationTask, or BinarySegmentationTask for a binary model's data
    "classification": ClassificationTask,
    "detection": DetectionTask,
}


def build_task(name: str, *args, **kwargs) -> Task:
    """``TASKS[name](cfg, splits)``, with the valid names on a typo."""
    if name not in TASKS:
        raise unknown("task", name, TASKS, "model.info.task")
    return TASKS[name](*args, **kwargs)


__all__ = ["TASKS", "Task", "Meter", "build_task"]
