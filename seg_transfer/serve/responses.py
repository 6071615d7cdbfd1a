"""What ``POST /predict`` answers: the query options as ``Predictor.predict`` options, and each task's
result as JSON (a segmentation mask as a PNG, detection instance masks as COCO RLE) or as an image."""
from __future__ import annotations

import base64
import io
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from ..errors import ConfigError, unknown
from ..predict import ClassificationResult, DetectionResult, Predictor, SegmentationResult
from ..viz import colour

# ``output=``: the JSON report (default), or the drawn result / the mask as a PNG image.
OUTPUTS = ("json", "overlay", "mask")
# The query parameters each task takes besides ``output`` and ``class`` (repeatable, or comma-separated).
TASK_QUERY: dict[str, tuple[str, ...]] = {"segmentation": ("threshold",), "detection": ("score_threshold",),
                                          "classification": ("top_k",)}
# The tasks each image output is drawn for (a classification result has no drawing).
IMAGE_OUTPUTS = {"overlay": ("segmentation", "detection"), "mask": ("segmentation",)}


def predict_options(query: Sequence[tuple[str, str]], predictor: Predictor) -> tuple[dict[str, Any], list[str], str]:
    """``(Predictor.predict options, the classes asked for, output)`` from the query string; an unknown
    parameter, class or value is a ConfigError naming it (the value ranges are checked by ``predict``)."""
    task, options, classes, output = predictor.task, {}, [], "json"
    valid = ("class", "output", *TASK_QUERY[task])
    for key, value in query:
        if key not in valid:
            raise unknown(f"query parameter for a {task} model", key, valid)
        if key == "class":
            classes += [c for c in value.split(",") if c]
        elif key == "output":
            output = value if value in OUTPUTS else _raise(unknown("output", value, OUTPUTS, "output"))
        elif key == "top_k":
            options["top_k"] = _number(key, value, int)
        else:
            options[key] = _number(key, value, float)
    for c in classes:
        if c not in predictor.classes:
            raise unknown("class", c, predictor.classes, "class")
    if output != "json" and task not in IMAGE_OUTPUTS[output]:
        raise ConfigError(f"output={output} applies to {' and '.join(IMAGE_OUTPUTS[output])} models, not {task}")
    if task == "segmentation" and classes:
        options["keep"] = classes  # tiled predictions keep only these probabilities
    if task == "detection":
        options["classes"] = classes
    if task == "segmentation" and "threshold" in options and not predictor.binary:
        raise ConfigError(f"threshold applies to binary segmentation models, not a {len(predictor.classes)}-class one")
    return options, classes, output


def _raise(err: Exception) -> Any:
    raise err


def _number(key: str, value: str, kind: Callable[[str], Any]) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigError(f"{key}: expected {'an integer' if kind is int else 'a number'}, got '{value}'") from None


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _png64(img: Image.Image) -> str:
    return base64.b64encode(png_bytes(img)).decode("ascii")


def _colours(ids: Sequence[int], classes: Sequence[str]) -> dict[str, list[int]]:
    """Each named class's overlay colour (the VOC colours of ``viz``, as in the saved overlays)."""
    return {classes[i]: list(colour(i)) for i in sorted(set(ids))}


def segmentation_json(result: SegmentationResult, classes: Sequence[str]) -> dict[str, Any]:
    """The class mask as a palette PNG (pixel value = class index), the pixel share of each class, their
    colours; with ``classes``, each one's probability as a greyscale PNG."""
    ids = [result.class_index(name) for name in result.fractions()]
    out: dict[str, Any] = {"height": int(result.mask.shape[0]), "width": int(result.mask.shape[1]),
                           "mask_png": _png64(result.mask_image()), "fractions": result.fractions(),
                           "colors": _colours(ids, result.classes)}
    if result.binary:
        out["threshold"] = result.threshold
    if classes:
        out["probabilities_png"] = {c: _png64(result.probability_image(c)) for c in classes}
    return out


def rle(mask: np.ndarray) -> dict[str, Any]:
    """A binary HxW mask in COCO's compressed RLE (``{"size": [h, w], "counts": str}``, pycocotools' decode reads it)."""
    from pycocotools import mask as coco_mask

    encoded = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in encoded["size"]], "counts": encoded["counts"].decode("ascii")}


def detection_json(result: DetectionResult) -> dict[str, Any]:
    """Boxes (x1, y1, x2, y2 input pixels), labels and scores; instance masks (at 0.5) as RLE."""
    out = {k: v for k, v in result.to_dict().items() if k != "image"}
    if result.masks is not None:
        for det, mask in zip(out["detections"], result.masks):
            det["mask_rle"] = rle((mask >= 0.5).numpy())
    out["colors"] = _colours([int(i) for i in result.labels], result.classes)
    return out


def classification_json(result: ClassificationResult, classes: Sequence[str]) -> dict[str, Any]:
    return {k: v for k, v in result.to_dict(classes).items() if k != "image"}


def result_json(result: Any, classes: Sequence[str]) -> dict[str, Any]:
    if isinstance(result, SegmentationResult):
        return segmentation_json(result, classes)
    if isinstance(result, DetectionResult):
        return detection_json(result)
    return classification_json(result, classes)


def result_image(result: Any, output: str) -> Image.Image:
    """``output=overlay``: the result drawn as ``infer`` saves it; ``output=mask``: the class-index PNG."""
    if isinstance(result, SegmentationResult):
        return result.mask_image() if output == "mask" else result.overlay()
    assert isinstance(result, DetectionResult), "predict_options allows image outputs for these two only"
    return result.boxes_image()


def model_json(predictor: Predictor, extra: Mapping[str, Any]) -> dict[str, Any]:
    """``GET /model``: what the server runs."""
    from ..version import __version__

    return {"task": predictor.task, "classes": predictor.classes, "binary": predictor.binary,
            "preprocess": predictor.preprocess.to_dict(), "backend": predictor.backend,
            "device": str(predictor.runner.device), "tile": predictor.tile, "overlap": predictor.overlap,
            "tta": None if predictor.tta is None else {"flip": predictor.tta.flip, "scales": list(predictor.tta.scales)},
            "version": __version__, **extra}
