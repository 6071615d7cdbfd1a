"""Which unlabelled images to label next (``seg-transfer suggest``): each pool image gets the model's
uncertainty about it and a feature vector (the backbone's deepest map, average-pooled), then a greedy
k-center pass weighted by uncertainty picks images the model is unsure about that are also far, in its
feature space, from the images already picked (Sener & Savarese's core-set, with each candidate's distance
multiplied by its uncertainty): a near-duplicate of a pick scores about zero.

Uncertainty, from 0 (sure) to 1: segmentation, the mean over pixels of the softmax entropy divided by
log(classes); classification, the same for the image's softmax; detection, 1 - the best box score (no box
at all: 1).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import nn
from tqdm import tqdm

from ..errors import BadInputError, ConfigError
from ..io import read_image, save_image, save_text
from ..run_folder import SUGGESTIONS_CSV, SUGGESTIONS_PNG, SUGGESTIONS_TXT
from ..viz import colour, draw_legend
from . import Predictor
from .classification import ClassificationResult
from .detection import DetectionResult
from .segmentation import SegmentationResult

CELL = 256  # the contact sheet's cell width in pixels


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Softmax entropy over dim 0 divided by log(C): 0 for a one-hot, 1 for the uniform distribution."""
    c = probs.shape[0]
    if c < 2:
        return torch.zeros(probs.shape[1:])
    p = probs.float().clamp_min(1e-12)
    return -(p * p.log()).sum(0) / math.log(c)


def uncertainty(result: Any) -> float:
    """How unsure the model is about one image (0 sure .. 1), by the result's task."""
    if isinstance(result, SegmentationResult):
        assert result.probs is not None  # suggest predicts untiled: the probabilities are kept
        return float(entropy(result.probs).mean())
    if isinstance(result, ClassificationResult):
        return float(entropy(result.probs))
    if isinstance(result, DetectionResult):
        return 1.0 - float(result.scores.max()) if len(result) else 1.0
    raise ConfigError(f"suggest: no uncertainty for {type(result).__name__}")


def pooled(output: Any) -> torch.Tensor:
    """A backbone's output (a map, a dict of maps, or pooled features) as N x C: the deepest map,
    average-pooled over its height and width."""
    if isinstance(output, dict):
        output = list(output.values())[-1]
    if isinstance(output, (list, tuple)):
        output = output[-1]
    return output.float().mean(dim=(2, 3)) if output.dim() == 4 else output.float().flatten(1)


class FeatureTap:
    """The pooled backbone features of each forward of ``model``: a forward hook on ``model.backbone``
    where the model runs it, else (a zoo classifier, whose backbone is a view over its layers) the
    backbone run on the model's input."""

    def __init__(self, model: nn.Module) -> None:
        backbone = getattr(model, "backbone", None)
        if not isinstance(backbone, nn.Module):
            raise ConfigError(f"suggest: {type(model).__name__} has no 'backbone' module to take features from")
        self.backbone = backbone
        self.features: list[torch.Tensor] = []
        self.inputs: list[Any] = []
        self.handles = [backbone.register_forward_hook(lambda m, i, out: self.features.append(pooled(out).cpu())),
                        model.register_forward_pre_hook(lambda m, args: self.inputs.append(args[0]))]

    @torch.inference_mode()
    def take(self) -> torch.Tensor:
        """The features of the forwards since the last call (their mean: TTA runs several), as C."""
        if not self.features:
            self.features = [pooled(self.backbone(x)).cpu() for x in self.inputs if isinstance(x, torch.Tensor)]
        if not self.features:
            raise ConfigError("suggest: the model's backbone gave no features")
        out = torch.cat(self.features).mean(0)
        self.features, self.inputs = [], []
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()


def select(uncertainties: Sequence[float], features: np.ndarray, n: int) -> list[tuple[int, float, float]]:
    """Greedy k-center weighted by uncertainty: the most uncertain image first, then each time the image of
    largest uncertainty x (distance to the nearest pick / the largest such distance), features L2-normalised.
    Returns (index, distance to the earlier picks (nan for the first), score) per pick, in order."""
    u = np.asarray(uncertainties, dtype=np.float64)
    f = np.asarray(features, dtype=np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    n = min(n, len(u))
    picks: list[tuple[int, float, float]] = []
    if n < 1:
        return picks
    first = int(np.argmax(u))
    picks.append((first, float("nan"), float(u[first])))
    nearest = np.linalg.norm(f - f[first], axis=1)
    taken = np.zeros(len(u), dtype=bool)
    taken[first] = True
    while len(picks) < n:
        spread = nearest / nearest.max() if nearest.max() > 0 else nearest
        # + 1e-6: a pool the model is sure about everywhere is still spread by distance alone
        score = np.where(taken, -np.inf, (u + 1e-6) * spread)
        k = int(np.argmax(score))
        picks.append((k, float(nearest[k]), float(score[k])))
        taken[k] = True
        nearest = np.minimum(nearest, np.linalg.norm(f - f[k], axis=1))
    return picks


@dataclass
class Scored:
    """One pool image: its path, uncertainty and pooled features."""

    path: Path
    uncertainty: float
    features: torch.Tensor


@dataclass
class Suggestions:
    """What ``suggest`` found: the picks in rank order (index into ``scored``, distance, score), and where it wrote."""

    scored: list[Scored]
    picks: list[tuple[int, float, float]]
    files: list[Path]
    failed: list[str]


def drawing(result: Any, image: torch.Tensor) -> Image.Image:
    """A prediction drawn over its image (3 x H x W uint8): masks with a legend, boxes with scores, or the
    top label."""
    if isinstance(result, SegmentationResult):
        return result.overlay()
    if isinstance(result, DetectionResult):
        return result.boxes_image()
    label, p = result.top[0]
    return draw_legend(Image.fromarray(image.permute(1, 2, 0).numpy()),
                       [(f"{label} {p:.0%}", colour(result.classes.index(label)))])


def contact_sheet(cells: Sequence[tuple[Image.Image, str]], columns: int = 4) -> Image.Image:
    """Images in a grid, each scaled to ``CELL`` pixels wide under a caption line."""
    font = ImageFont.load_default(size=13)
    caption = 36
    thumbs = [img.convert("RGB").resize((CELL, max(1, round(img.height * CELL / img.width)))) for img, _ in cells]
    height = max((t.height for t in thumbs), default=CELL) + caption
    cols = max(1, min(columns, len(cells)))
    rows = max(1, math.ceil(len(cells) / cols))
    sheet = Image.new("RGB", (cols * CELL, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (thumb, (_, text)) in enumerate(zip(thumbs, cells)):
        x, y = (k % cols) * CELL, (k // cols) * height
        draw.multiline_text((x + 4, y + 2), text, fill="black", font=font, spacing=2)
        sheet.paste(thumb, (x, y + caption))
    return sheet


def suggest(predictor: Predictor, pool: Sequence[Path], n: int, out: Path, progress: bool = True,
            log: Callable[[str], None] = print) -> Suggestions:
    """Score every image of ``pool`` with ``predictor``'s model, pick ``n``, write the ranked CSV, the list
    of picks and their contact sheet into ``out`` (``run_folder.SUGGESTIONS_*``). Unreadable images are
    skipped and listed in ``failed``."""
    if n < 1:
        raise ConfigError(f"--n: expected at least 1 image to suggest, got {n}")
    if predictor.model is None:
        raise ConfigError("suggest: needs the model itself (a checkpoint), not an exported file")
    options: dict[str, Any] = {"tile": 0}  # one forward per image: its features are the whole image's
    if predictor.task == "segmentation":
        options["resize_to_input"] = False  # entropy at the model's resolution: the same mean, less work
    elif predictor.task == "detection":
        options["score_threshold"] = 0.0  # the best box, however weak
    else:
        options = {}
    tap = FeatureTap(predictor.model)
    scored, failed = [], []
    try:
        for path in tqdm(pool, desc="scoring the pool", unit="img", disable=not progress, leave=False):
            try:
                result = predictor.predict(read_image(path), **options)
            except BadInputError as err:
                failed.append(str(err))
                tap.features, tap.inputs = [], []
                continue
            scored.append(Scored(path, uncertainty(result), tap.take()))
    finally:
        tap.close()
    if not scored:
        raise ConfigError(f"suggest: no readable image in the pool ({len(failed)} failed: {failed[0] if failed else ''})")
    picks = select([s.uncertainty for s in scored], torch.stack([s.features for s in scored]).numpy(), n)
    cells = []
    for r, (i, _, _) in enumerate(picks):  # predicted again: a pool's results would not fit in memory
        image = read_image(scored[i].path)
        cells.append((drawing(predictor.predict(image, **options), image),
                      f"#{r + 1} uncertainty {scored[i].uncertainty:.3f}\n{_short(scored[i].path)}"))
    return Suggestions(scored, picks, write(scored, picks, cells, out), failed)


def write(scored: Sequence[Scored], picks: Sequence[tuple[int, float, float]],
          cells: Sequence[tuple[Image.Image, str]], out: Path) -> list[Path]:
    """The ranked CSV, the list of picked paths and the contact sheet of ``cells``."""
    rank = {i: r for r, (i, _, _) in enumerate(picks)}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["rank", "image", "uncertainty", "distance", "score"])
    for r, (i, distance, score) in enumerate(picks):
        writer.writerow([r + 1, scored[i].path, f"{scored[i].uncertainty:.6f}",
                         "" if math.isnan(distance) else f"{distance:.6f}", f"{score:.6f}"])
    rest = sorted((i for i in range(len(scored)) if i not in rank), key=lambda i: -scored[i].uncertainty)
    for i in rest:
        writer.writerow(["", scored[i].path, f"{scored[i].uncertainty:.6f}", "", ""])
    return [save_text(buf.getvalue(), out / SUGGESTIONS_CSV),
            save_text("".join(f"{scored[i].path}\n" for i, _, _ in picks), out / SUGGESTIONS_TXT),
            save_image(contact_sheet(cells), out / SUGGESTIONS_PNG)]


def _short(path: Path, width: int = 34) -> str:
    name = path.name
    return name if len(name) <= width else "..." + name[-(width - 3):]


__all__ = ["Suggestions", "select", "suggest", "uncertainty"]
