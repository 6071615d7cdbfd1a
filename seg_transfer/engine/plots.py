"""Training figures of every task: loss/metric curves, prediction grids (segmentation masks, detection
boxes, classification labels), confusion matrices and detection's precision-recall curves.

Figures are ``matplotlib.figure.Figure`` objects drawn by the Agg canvas without pyplot: nothing is
registered in pyplot's global figure list (the usual leak of plotting every epoch), no display is
needed, and the user's own backend choice is left alone. Every file is written through
``io.atomic_path``, so an interrupted run never leaves a half-written PNG.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from torch import nn

from ..errors import unknown
from ..io import atomic_path, read_image
from ..models.build import model_info
from ..run_folder import CONFUSION, RunFolder
from ..viz import VOID, draw_boxes, palette

PathLike = Union[str, os.PathLike]
ArrayLike = Union[np.ndarray, torch.Tensor]
NORMALIZE = ("true", "pred", "all", "none")
MAX_ANNOTATED = 20  # above this, per-cell numbers are unreadable and only the colours are drawn


def _save(fig: Figure, path: PathLike, dpi: int = 100) -> Path:
    """Render ``fig`` to ``path`` atomically, then drop its artists so nothing outlives the call."""
    path = Path(path)
    FigureCanvasAgg(fig)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip(".").lower() or "png", dpi=dpi)
    finally:
        fig.clear()
    return path


def _float(value: Any) -> float:
    """A CSV cell or number as float; empty, missing or unparsable cells are NaN (a gap in the line)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _compact(count: float) -> str:
    """1234 -> '1.2k', 5600000 -> '5.6M': pixel counts must fit in a cell."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if count >= div:
            return f"{count / div:.1f}{suffix}"
    return f"{count:.0f}"


# ------------------------------------------------------------------------------------------ curves
SCORES = (("miou", "mIoU"), ("iou", "IoU"), ("dice", "Dice"), ("pixel_acc", "pixel accuracy"), ("accuracy", "accuracy"),
          ("macro_f1", "macro F1"), ("ap", "AP"), ("ap50", "AP50"),
          ("knn_accuracy", "k-NN accuracy"), ("accepted", "pseudo-labels accepted"))  # the validation columns curves.png draws
# (iou and dice: a binary segmentation model's foreground; knn_accuracy: pretrain's monitor; accepted:
# self-training's share of pseudo-labels)


def plot_curves(rows: Sequence[Mapping[str, Any]], path: PathLike, metric: Optional[str] = None) -> Path:
    """Loss (train/val, LR on a second axis) and the validation scores per epoch, from metrics.csv rows;
    a star on the best epoch of ``metric`` (default: the first of miou, accuracy, ap that has values)."""
    epochs = [_float(r.get("epoch", i + 1)) for i, r in enumerate(rows)]

    def column(key: str) -> Optional[list[float]]:
        values = [_float(r.get(key)) for r in rows]
        return values if any(math.isfinite(v) for v in values) else None

    fig = Figure(figsize=(11, 4), layout="constrained")
    loss_ax, score_ax = fig.subplots(1, 2)
    # Markers: a 1-epoch run is a single point, which a line alone would not show.
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        if (values := column(key)) is not None:
            loss_ax.plot(epochs, values, marker="o", ms=3, label=label)
    if (lrs := column("lr")) is not None and all(v > 0 for v in lrs if math.isfinite(v)):
        # LR on its own log axis: warmup, decay and unfreezing steps line up with the loss they cause.
        lr_ax = loss_ax.twinx()
        lr_ax.plot(epochs, lrs, color="0.6", ls="--", lw=1, label="lr (right)")
        lr_ax.set_yscale("log")
        lr_ax.set_ylabel("learning rate", color="0.4")
        handles, labels = (a + b for a, b in zip(loss_ax.get_legend_handles_labels(),
                                                 lr_ax.get_legend_handles_labels()))
        loss_ax.legend(handles, labels, loc="best", fontsize=8)
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    for key, label in SCORES:
        if (values := column(key)) is not None:
            score_ax.plot(epochs, values, marker="o", ms=3, label=label)
    marked = metric or next((k for k in ("miou", "accuracy", "ap") if column(k) is not None), None)
    if marked is not None and (values := column(marked)) is not None:
        best = int(np.nanargmax(values))
        score_ax.plot([epochs[best]], [values[best]], "*", ms=12, color="C3",
                      label=f"best {dict(SCORES).get(marked, marked)} {values[best]:.4f} (epoch {epochs[best]:g})")
    score_ax.set(xlabel="epoch", ylabel="score", title="validation")
    for ax in (loss_ax, score_ax):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no 1.2, 1.4 ticks on a short run
        if ax.get_legend() is None and ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=8)
    if not rows:
        fig.suptitle("no epochs yet")
    return _save(fig, path)


# ------------------------------------------------------------------------------------- predictions
def spread(n: int, length: int) -> list[int]:
    """Up to ``n`` indices spread evenly over ``range(length)``, first and last included."""
    return sorted({int(round(v)) for v in np.linspace(0, length - 1, min(n, length))})


@torch.inference_mode()
def sample_predictions(model: nn.Module, dataset: Any, indices: Iterable[int], device: torch.device,
                       predict: Callable[[Any], Any]) -> tuple[list[np.ndarray], list[Any], list[Any]]:
    """Items ``indices`` of a transformed val split as (uint8 HxWx3 image, target, ``predict(model output)``)."""
    model.eval()
    norm = model_info(model).preprocess
    mean, std = torch.tensor(norm.mean).view(3, 1, 1), torch.tensor(norm.std).view(3, 1, 1)
    images, targets, preds = [], [], []
    for i in indices:
        image, target = dataset[i]
        preds.append(predict(model(image[None].to(device))))
        images.append(((image * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
        targets.append(target)
    return images, targets, preds


def plot_classifications(images: Sequence[np.ndarray], targets: Sequence[int], preds: Sequence[int],
                         classes: Sequence[str], path: PathLike, columns: int = 4,
                         titles: Optional[Sequence[str]] = None) -> Path:
    """predictions.png of a classifier: a grid of images titled 'predicted / true', green when right, red
    when wrong; ``titles`` (one per image) go on a line above."""
    n = max(len(images), 1)
    cols = min(columns, n)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(3 * cols, (3.2 if titles is None else 3.6) * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for i, (ax, image, true, pred) in enumerate(zip(axes, images, targets, preds)):
        ax.imshow(image)
        title = f"{classes[pred]} / {classes[true]}"
        if titles is not None:
            title = f"{titles[i]}\n{title}"
        ax.set_title(title, color="green" if pred == true else "red", fontsize=10 if titles is None else 9)
    fig.suptitle("predicted / true")
    return _save(fig, path)


@torch.inference_mode()
def plot_detections(model: nn.Module, dataset: Any, n: int, device: torch.device, classes: Sequence[str],
                    path: PathLike, score_threshold: float = 0.5, indices: Optional[Sequence[int]] = None,
                    titles: Optional[Sequence[str]] = None) -> Path:
    """predictions.png of a detector: a row per val item (transformed: image tensor in [0, 1], target
    dict), ground-truth boxes | predicted boxes with scores; items ``indices`` (default the first ``n``),
    ``titles`` (one per row) before the ground truth's."""
    model.eval()
    items = list(indices) if indices is not None else list(range(min(n, len(dataset))))
    n = len(items)
    fig = Figure(figsize=(8, 3.2 * max(n, 1)), layout="constrained")
    axes = fig.subplots(max(n, 1), 2, squeeze=False)
    for i, item in enumerate(items):
        image, target = dataset[item]
        out = model([image.to(device)])[0]
        keep = out["scores"] >= score_threshold
        pixels = (image.detach().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
        panels = [(draw_boxes(pixels, target["boxes"], target["labels"], classes),
                   (f"{titles[i]}\n" if titles is not None else "") + f"ground truth ({len(target['boxes'])} boxes)"),
                  (draw_boxes(pixels, out["boxes"][keep], out["labels"][keep], classes, out["scores"][keep]),
                   f"prediction (score >= {score_threshold}: {int(keep.sum())} boxes)")]
        for ax, (drawn, title) in zip(axes[i], panels):
            ax.imshow(drawn.permute(1, 2, 0).numpy())
            ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    return _save(fig, path)


def _mask(mask: ArrayLike) -> np.ndarray:
    """HxW class indices from indices or CxHxW scores (argmax over C)."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    return m.argmax(0) if m.ndim == 3 else m


def colorize(mask: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """HxWx3 uint8 in the VOC palette; ``ignore_index`` (and any label outside the classes) gets VOC's void
    colour, which no class shares (class 0 is black: CamVid's sky and its ignored pixels looked alike)."""
    valid = (mask >= 0) & (mask < num_classes) & (mask != ignore_index)
    colours = palette()
    rgb = colours[np.where(valid, mask, 0).astype(np.int64)]
    rgb[~valid] = colours[VOID]
    return rgb


def _denormalize(image: ArrayLike, mean: Optional[Sequence[float]], std: Optional[Sequence[float]]) -> ArrayLike:
    if mean is None or std is None:
        return image
    t = torch.as_tensor(image).float()
    return t * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)


def plot_predictions(images: Sequence[Any], targets: Sequence[ArrayLike], preds: Sequence[ArrayLike],
                     classes: Sequence[str], path: PathLike, ignore_index: int = 255, max_samples: int = 8,
                     mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                     titles: Optional[Sequence[str]] = None) -> Path:
    """A grid with a row per sample and columns image | ground truth | prediction, and a legend of the
    classes present. Images: anything ``io.read_image`` takes (HxWx3 uint8, 3xHxW in [0, 1], PIL...),
    or normalised 3xHxW tensors with ``mean``/``std`` given. Predictions: indices or CxHxW scores.
    ``titles`` (one per row) replace the image column's title."""
    n = min(len(images), len(targets), len(preds), max_samples)
    fig = Figure(figsize=(9, 3 * max(n, 1) + 0.7), layout="constrained")  # + a row for the legend
    axes = fig.subplots(max(n, 1), 3, squeeze=False)
    present: set[int] = set()
    has_ignore = False
    for i in range(n):
        image = read_image(_denormalize(images[i], mean, std)).permute(1, 2, 0).numpy()
        target, pred = _mask(targets[i]), _mask(preds[i])
        scored = (target != ignore_index) & (target >= 0) & (target < len(classes))
        for m in (target, pred):
            present.update(int(c) for c in np.unique(m) if 0 <= c < len(classes) and c != ignore_index)
        has_ignore |= bool((~scored).any())
        acc = float((pred[scored] == target[scored]).mean()) if scored.any() and pred.shape == target.shape else None
        panels = [(image, titles[i] if titles is not None else "image"),
                  (colorize(target, len(classes), ignore_index), "ground truth"),
                  (colorize(pred, len(classes), ignore_index),
                   "prediction" + (f" (pixel acc {acc:.3f})" if acc is not None else ""))]
        for ax, (pixels, title) in zip(axes[i], panels):
            ax.imshow(pixels, interpolation="nearest")
            ax.set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_axis_off()
    colours = palette(max(len(classes), 1)) / 255.0
    handles = [Patch(facecolor=colours[c], edgecolor="0.5", label=str(classes[c])) for c in sorted(present)]
    if has_ignore:
        handles.append(Patch(facecolor=palette()[VOID] / 255.0, edgecolor="0.5",
                             label=f"ignored ({ignore_index}), not scored"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8)
    return _save(fig, path)


# -------------------------------------------------------------------------------------- confusion
def normalize_confusion(matrix: ArrayLike, normalize: Optional[str] = "true") -> np.ndarray:
    """Rows are labels, columns predictions (as ConfusionMatrix.mat). ``true``: each row sums to 1
    (recall per class); ``pred``: each column (precision); ``all``: the whole; ``none``: counts.
    Rows/columns without pixels are NaN, not 0: nothing was measured there."""
    mat = np.asarray(matrix.detach().cpu() if isinstance(matrix, torch.Tensor) else matrix, dtype=np.float64)
    norm = "none" if normalize is None else normalize
    if norm not in NORMALIZE:
        raise unknown("confusion normalisation", norm, NORMALIZE, "normalize")
    if norm == "none":
        return mat
    total = {"true": mat.sum(1, keepdims=True), "pred": mat.sum(0, keepdims=True), "all": mat.sum()}[norm]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, mat / np.where(total > 0, total, 1), np.nan)


def plot_confusion(matrix: Any, classes: Sequence[str], path: PathLike, normalize: Optional[str] = "true",
                   unit: str = "pixels", title: str = "confusion matrix") -> Path:
    """A heatmap of a confusion matrix (label rows x predicted columns) with class names, and each
    cell's value written in when there are at most 20 classes. ``matrix``: array, tensor or ConfusionMatrix;
    ``unit``: what the counts count (the colour bar's label without normalisation); NaN cells are grey."""
    mat = normalize_confusion(getattr(matrix, "mat", matrix), normalize)
    n = len(classes)
    if mat.shape != (n, n):
        raise ValueError(f"confusion matrix of shape {mat.shape} for {n} classes")
    side = min(4 + 0.45 * n, 24)  # grows with the classes, capped so 150 classes stay a few MB at most
    fig = Figure(figsize=(side + 1.5, side), layout="constrained")
    ax = fig.subplots()
    counts = normalize in (None, "none")
    vmax = np.nanmax(mat) if counts and np.isfinite(mat).any() else 1.0
    cmap = colormaps["Blues"].with_extremes(bad="0.85")  # grey: no pixels in that row/column, so no rate
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0, vmax=max(vmax, 1e-12), interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=unit if counts else f"fraction ({normalize})")
    font = max(3.0, min(9.0, 220.0 / max(n, 1)))
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=90, fontsize=font)
    ax.set_yticks(range(n), [str(c) for c in classes], fontsize=font)
    ax.set(xlabel="predicted", ylabel="label", title=title + ("" if counts else f" ({normalize})"))
    if n <= MAX_ANNOTATED:
        for (r, c), v in np.ndenumerate(mat):
            if math.isfinite(v):
                text = _compact(v) if counts else f"{v:.2f}"
                ax.text(c, r, text, ha="center", va="center", fontsize=font * 0.85,
                        color="white" if v > 0.6 * vmax else "black")
    return _save(fig, path)


def confusion_report(matrix: torch.Tensor, classes: Sequence[str], out_dir: Path, unit: str = "pixels") -> dict[str, Any]:
    """``confusion.png`` in ``out_dir``, and the counts for the evaluation report."""
    plot_confusion(matrix.cpu().numpy(), classes, RunFolder(out_dir).confusion, unit=unit)
    return {"confusion": matrix.tolist(), "files": [CONFUSION]}


def plot_detection_confusion(matrix: np.ndarray, classes: Sequence[str], path: PathLike, iou: float = 0.5,
                             score: float = 0.5) -> Path:
    """A detection confusion matrix of box counts (``CocoMeter.confusion``: background at 0, first row
    false alarms, first column missed boxes); the background/background cell is grey (nothing counts there)."""
    mat = np.asarray(matrix, dtype=np.float64).copy()
    mat[0, 0] = np.nan
    names = ["background", *classes[1:]]
    return plot_confusion(mat, names, path, normalize="none", unit="boxes",
                          title=f"boxes matched at IoU {iou:g}, score >= {score:g}")


def plot_pr_curves(recall: Optional[np.ndarray], precision: Optional[np.ndarray], classes: Sequence[str],
                   path: PathLike, iou: float = 0.5) -> Path:
    """Per-class precision-recall curves (COCOeval's interpolated precision at ``recall`` points; one row
    of ``precision`` per class, -1 where the class has no box); each labelled with its AP (the curve's mean)."""
    fig = Figure(figsize=(6.5, 5), layout="constrained")
    ax = fig.subplots()
    drawn = 0
    if recall is not None and precision is not None:
        for c, (name, p) in enumerate(zip(classes, precision)):
            if not (p > -1).any():
                continue  # no ground truth of this class: no curve
            p = np.where(p > -1, p, 0.0)
            ax.plot(recall, p, color=f"C{c % 10}", drawstyle="steps-post", label=f"{name} (AP{iou * 100:.0f} {p.mean():.3f})")
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no detections or no labelled boxes", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title=f"precision-recall at IoU {iou:g} (COCOeval, interpolated)")
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------- cross-validation
def plot_cross_validation(scores: Mapping[str, Sequence[float]], per_class: Mapping[str, Sequence[float]],
                          per_class_label: str, path: PathLike, title: str = "") -> Path:
    """cv.png: each metric's value per run (dots) with mean +- std (bar), and one per-class figure the same way.

    ``scores``: metric -> one value per run; ``per_class``: class name -> one value per run.
    """
    panels = [(scores, "score", "metrics over runs")]
    if per_class:
        panels.append((per_class, per_class_label, f"per class: {per_class_label}"))
    fig = Figure(figsize=(5 + 0.45 * sum(len(p[0]) for p in panels), 4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False,
                        gridspec_kw={"width_ratios": [max(len(p[0]), 1) for p in panels]})[0]
    for ax, (values, ylabel, panel_title) in zip(axes, panels):
        for x, (name, runs) in enumerate(values.items()):
            finite = [v for v in runs if math.isfinite(v)]
            if not finite:
                continue
            # Dots spread a little sideways: equal values of several runs stay countable.
            jitter = np.linspace(-0.12, 0.12, len(finite)) if len(finite) > 1 else np.zeros(1)
            ax.plot(x + jitter, finite, "o", ms=4, color="C0", alpha=0.6)
            mean = float(np.mean(finite))
            std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
            ax.errorbar([x + 0.3], [mean], yerr=[std], fmt="s", color="C3", capsize=4, ms=5)
        crowded = len(values) > 4 or any(len(str(name)) > 8 for name in values)
        ax.set_xticks(range(len(values)), list(values), rotation=30 if crowded else 0,
                      ha="right" if crowded else "center")
        ax.set(ylabel=ylabel, title=panel_title)
        ax.grid(alpha=0.3, axis="y")
    axes[0].plot([], [], "o", color="C0", alpha=0.6, label="one run")
    axes[0].errorbar([], [], yerr=[], fmt="s", color="C3", capsize=4, label="mean +- std")
    axes[0].legend(loc="best", fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
