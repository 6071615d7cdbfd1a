"""Where every task's metric is computed, as a ``Meter`` (``update`` per batch, ``reduce`` across ranks,
``compute`` once): segmentation's mIoU from a streaming confusion matrix of pixels, classification's
accuracy / top-k / per-class F1 from a confusion matrix of images, detection's COCO AP through
pycocotools' ``COCOeval``."""
from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from .distributed import is_dist, unshard, world_size


class Meter:
    """Accumulates one evaluation pass: ``update`` per batch, ``reduce`` across ranks, ``compute`` once."""

    def update(self, outputs: Any, targets: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def reduce(self) -> Meter:
        """Sum the state over ranks (no-op unless torch.distributed is initialised)."""
        return self

    def compute(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError


# ----------------------------------------------------------------------------------- segmentation
class ConfusionMatrix:
    """Counts ``mat[target, pred]`` over every labelled pixel seen by ``update``; ``compute`` derives
    IoU and accuracies from the counts, so results do not depend on how images were batched.

    Pixels labelled ``ignore_index`` (or with any label outside ``[0, num_classes)``) are not counted.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: class indices shaped like ``target`` (N×H×W), or logits N×C×H×W (argmax over C)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target {tuple(target.shape)}")
        if self.mat.device != target.device:
            # Counting stays on the inputs' device: no copy of every batch to the host.
            self.mat = self.mat.to(target.device)
        n = self.num_classes
        target, pred = target.flatten().long(), pred.flatten().long()
        keep = (target != self.ignore_index) & (target >= 0) & (target < n) & (pred >= 0) & (pred < n)
        self.mat += torch.bincount(target[keep] * n + pred[keep], minlength=n * n).view(n, n)

    def reduce(self) -> ConfusionMatrix:
        """Sum the counts of every process when ``torch.distributed`` is initialised (torchrun); else no-op.
        Call it once, after the last ``update`` and before ``compute``: a second call would double-count."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.mat, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> dict[str, Any]:
        """``miou``, ``iou`` (per class; NaN for a class absent from both predictions and labels, left out
        of the mean), ``pixel_accuracy``, ``mean_accuracy`` (over classes present in the labels)."""
        mat = self.mat.detach().to("cpu", torch.float64)
        tp = mat.diag()
        labelled = mat.sum(1)
        predicted = mat.sum(0)
        union = labelled + predicted - tp
        nan = torch.full_like(tp, math.nan)
        iou = torch.where(union > 0, tp / union.clamp_min(1), nan)
        acc = torch.where(labelled > 0, tp / labelled.clamp_min(1), nan)
        total = mat.sum()
        return {
            "miou": float(iou.nanmean()),
            "iou": iou.tolist(),
            "pixel_accuracy": float(tp.sum() / total) if total > 0 else math.nan,
            "mean_accuracy": float(acc.nanmean()),
            "class_accuracy": acc.tolist(),
        }


class SegmentationMeter(Meter):
    """The confusion matrix of argmax predictions over labelled pixels."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.matrix = ConfusionMatrix(num_classes, ignore_index)

    def update(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> None:
        self.matrix.update(outputs["out"].argmax(1), targets)

    def reduce(self) -> SegmentationMeter:
        self.matrix.reduce()
        return self

    def compute(self) -> dict[str, Any]:
        return self.matrix.compute()


# --------------------------------------------------------------------------------- classification
class ClassificationMeter(Meter):
    """A confusion matrix (label rows x predicted columns) plus top-k hits."""

    def __init__(self, num_classes: int, k: int) -> None:
        self.matrix = ConfusionMatrix(num_classes, ignore_index=-100)
        self.k = k
        self.topk = torch.zeros(2, dtype=torch.int64)  # (hits, count)

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.matrix.update(outputs.argmax(1), targets)
        top = outputs.topk(self.k, dim=1).indices
        hits = (top == targets[:, None]).any(1).sum()
        self.topk = self.topk.to(targets.device) + torch.stack([hits, targets.new_tensor(len(targets))])

    def reduce(self) -> ClassificationMeter:
        self.matrix.reduce()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.topk, op=dist.ReduceOp.SUM)
        return self

    def compute(self) -> dict[str, Any]:
        return classification_metrics(self.matrix.mat, self.topk, self.k)


def classification_metrics(mat: torch.Tensor, topk: torch.Tensor, k: int) -> dict[str, Any]:
    """accuracy, top-k accuracy, per-class precision/recall/F1 (NaN where undefined) and their macro means."""
    mat = mat.detach().to("cpu", torch.float64)
    tp, labelled, predicted = mat.diag(), mat.sum(1), mat.sum(0)
    nan = torch.full_like(tp, math.nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), nan)
    recall = torch.where(labelled > 0, tp / labelled.clamp_min(1), nan)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom, torch.where(labelled > 0, 0.0, nan))
    total = float(mat.sum())
    hits, count = (int(v) for v in topk.tolist())
    return {
        "accuracy": float(tp.sum()) / total if total else math.nan,
        f"top{k}": hits / count if count else math.nan,
        "macro_f1": float(f1.nanmean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": [int(v) for v in labelled.tolist()],
    }


# -------------------------------------------------------------------------------------- detection
# COCOeval.stats[0..5] in its order; -1 there (no ground truth in that size range) becomes NaN here.
STATS = ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")


def _xywh(boxes: np.ndarray) -> np.ndarray:
    out = boxes.astype(np.float64).copy()
    out[:, 2:] -= out[:, :2]
    return out


def _rle(masks: np.ndarray) -> list[dict[str, Any]]:
    """N x H x W {0,1} (or probabilities, thresholded at 0.5) -> COCO RLEs (counts as str, JSON-able)."""
    binary = np.asfortranarray((masks > 0.5).astype(np.uint8).transpose(1, 2, 0))  # pycocotools wants H x W x N
    rles = mask_utils.encode(binary) if len(masks) else []
    for r in rles:
        r["counts"] = r["counts"].decode("ascii")
    return list(rles)


class CocoMeter(Meter):
    """Collects ground truth and detections per image; ``compute`` runs COCOeval once at the end."""

    def __init__(self, num_classes: int, masks: bool = False) -> None:
        self.num_classes = num_classes  # including background (label 0)
        self.masks = masks
        self.images: list[dict[str, Any]] = []  # {"gt": {...numpy}, "dt": {...numpy}, "size": (h, w)}

    def update(self, outputs: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
               sizes: Optional[Sequence[tuple[int, int]]] = None) -> None:
        for k, (out, tgt) in enumerate(zip(outputs, targets)):
            # numpy arrays, then the masks' RLEs (lists) with self.masks
            gt: dict[str, Any] = {key: v.detach().cpu().numpy() for key, v in tgt.items()
                                  if key in ("boxes", "labels", "iscrowd", "masks")}
            dt: dict[str, Any] = {key: v.detach().float().cpu().numpy() if key != "labels" else v.cpu().numpy()
                                  for key, v in out.items() if key in ("boxes", "labels", "scores", "masks")}
            if "masks" in dt and dt["masks"].ndim == 4:  # Mask R-CNN: N x 1 x H x W probabilities
                dt["masks"] = dt["masks"][:, 0]
            size = sizes[k] if sizes is not None else self._size(gt, dt)
            if self.masks:  # encode now: full-size masks of a whole val set would not fit in memory
                for d in (gt, dt):
                    if "masks" in d:
                        d["rles"] = _rle(d.pop("masks"))
            else:
                gt.pop("masks", None)
                dt.pop("masks", None)
            self.images.append({"gt": gt, "dt": dt, "size": size})

    @staticmethod
    def _size(gt: dict[str, np.ndarray], dt: dict[str, np.ndarray]) -> tuple[int, int]:
        for d in (gt, dt):
            if "masks" in d and d["masks"].ndim == 3:
                return int(d["masks"].shape[-2]), int(d["masks"].shape[-1])
        boxes = [d["boxes"] for d in (gt, dt) if len(d.get("boxes", ()))]
        top = np.concatenate(boxes).max(0) if boxes else np.ones(4)
        return int(np.ceil(top[3])) + 1, int(np.ceil(top[2])) + 1  # only used by mask RLEs' frame

    def reduce(self) -> CocoMeter:
        if is_dist():
            gathered: list[Any] = [None] * world_size()
            torch.distributed.all_gather_object(gathered, self.images)
            # Back in dataset order: COCOeval breaks score ties by image order, so the one-process AP needs it.
            self.images = unshard(gathered)
        return self

    def _coco(self) -> tuple[COCO, list[dict[str, Any]], bool]:
        images, dets = [], []
        anns: list[dict[str, Any]] = []
        with_masks = self.masks and any("rles" in im["gt"] for im in self.images) \
            and any("rles" in im["dt"] for im in self.images)
        for image_id, im in enumerate(self.images, start=1):
            h, w = im["size"]
            images.append({"id": image_id, "height": h, "width": w})
            gt, dt = im["gt"], im["dt"]
            crowd = gt.get("iscrowd", np.zeros(len(gt["labels"]), np.int64))
            for j, (box, label) in enumerate(zip(_xywh(gt["boxes"].reshape(-1, 4)), gt["labels"])):
                ann = {"id": len(anns) + 1, "image_id": image_id, "category_id": int(label), "bbox": box.tolist(),
                       "area": float(box[2] * box[3]), "iscrowd": int(crowd[j])}
                if with_masks and "rles" in gt:
                    ann["segmentation"] = gt["rles"][j]
                    ann["area"] = float(mask_utils.area(gt["rles"][j]))
                anns.append(ann)
            for j, (box, label, score) in enumerate(zip(_xywh(dt["boxes"].reshape(-1, 4)), dt["labels"], dt["scores"])):
                det = {"image_id": image_id, "category_id": int(label), "bbox": box.tolist(), "score": float(score)}
                if with_masks and "rles" in dt:
                    det["segmentation"] = dt["rles"][j]
                dets.append(det)
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns,
                        "categories": [{"id": k} for k in range(1, self.num_classes)]}
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
        return coco, dets, with_masks

    def compute(self) -> dict[str, Any]:
        """{ap, ap50, ap75, ap_small, ap_medium, ap_large, ap_per_class, ap50_per_class[, mask_ap, mask_ap50]}
        over classes 1..K (per-class lists have one entry per object class, background left out)."""
        coco, dets, with_masks = self._coco()
        metrics = self._evaluate(coco, dets, "bbox")
        if self.masks:
            segm = self._evaluate(coco, dets, "segm") if with_masks else {}
            metrics["mask_ap"] = segm.get("ap", float("nan"))
            metrics["mask_ap50"] = segm.get("ap50", float("nan"))
        return metrics

    def _evaluate(self, coco: COCO, dets: list[dict[str, Any]], iou_type: str) -> dict[str, Any]:
        k = self.num_classes - 1
        if not dets or not coco.dataset["annotations"]:
            # nothing detected scores 0 (loadRes refuses an empty list); no ground truth leaves AP undefined
            value = 0.0 if coco.dataset["annotations"] else float("nan")
            return {**{s: value for s in STATS}, "ap_per_class": [value] * k, "ap50_per_class": [value] * k}
        with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables; the task formats its own
            result = coco.loadRes(dets)
            ev = COCOeval(coco, result, iou_type)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        metrics: dict[str, Any] = {s: (float(v) if v >= 0 else float("nan")) for s, v in zip(STATS, ev.stats)}
        # precision: [IoU thresholds, recall points, classes, area ranges, max dets]; area "all", 100 dets
        precision = ev.eval["precision"][:, :, :, 0, -1]
        per_class, per_class50 = [], []
        for c in range(k):
            p = precision[:, :, c]
            per_class.append(float(p[p > -1].mean()) if (p > -1).any() else float("nan"))
            p50 = precision[0, :, c]
            per_class50.append(float(p50[p50 > -1].mean()) if (p50 > -1).any() else float("nan"))
        metrics["ap_per_class"], metrics["ap50_per_class"] = per_class, per_class50
        return metrics
