"""What the server's tests share: the smallest stand-in model of each task, images as bytes, a slow runner."""
from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
from PIL import Image

from seg_transfer.predict import Predictor
from seg_transfer.predict.backends import Runner

# The smallest zoo model of each task (stand-in weights).
TASK_MODELS = {"segmentation": "lraspp_mobilenet_v3_large", "detection": "ssdlite320_mobilenet_v3_large",
               "classification": "resnet18"}


def predictor(standin, task: str) -> Predictor:
    standin(TASK_MODELS[task])
    return Predictor(TASK_MODELS[task])


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def noise_image(seed: int, size: int = 64) -> bytes:
    """A PNG of smooth random colours: each seed a different picture (and a different prediction)."""
    low = np.random.default_rng(seed).integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return png(Image.fromarray(low).resize((size, size), Image.BILINEAR))


class SlowRunner(Runner):
    """A runner that takes ``seconds`` more per call: requests pile up behind it (the queue and timeout tests)."""

    def __init__(self, runner: Runner, seconds: float):
        self.runner, self.meta, self.device, self.seconds = runner, runner.meta, runner.device, seconds

    def __call__(self, batch: Any) -> Any:
        time.sleep(self.seconds)
        return self.runner(batch)
