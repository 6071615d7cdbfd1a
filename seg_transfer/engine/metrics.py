"""Where every task's metric is computed, as a ``Meter`` (``update`` per batch, ``reduce`` across ranks,
``compute`` once): segmentation's mIoU from a streaming confusion matrix of pixels (a binary model's
foreground IoU, Dice, precision and recall at a threshold from a 2×2 one), classification's
accuracy / top-k / per-class F1 from a confusion matrix of images, detection's COCO AP through
pycocotools' ``COCOeval`` (with its precision-recall curves) and a box confusion matrix matched at IoU 0.5.
Every meter also scores each image on its own (``image_scores``, in dataset order): the run report shows
the best and worst val images by it."""
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
from torchvision.ops import box_iou

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

    def image_scores(self) -> list[float]:
        """One score per image seen, in dataset order (after ``reduce``), higher is better; [] if none."""
        return []


def gather_in_order(items: list[Any]) -> list[Any]:
    """Every rank's per-item list of an unpadded sharded pass, back in dataset order (itself on one process)."""
    if not is_dist():
        return items
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, items)
    return unshard(gathered)


def image_iou(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """Per image of an N x H x W batch, the mean IoU over the classes present in its labels or its
    prediction (labelled pixels only); 1.0 for an image without labelled pixels."""
    n = num_classes
    target, pred = target.flatten(1).long(), pred.flatten(1).long()
    keep = (target != ignore_index) & (target >= 0) & (target < n) & (pred >= 0) & (pred < n)
    image = torch.arange(len(target), device=target.device)[:, None].expand_as(target)
    flat = (image * n * n + target * n + pred)[keep]
    mat = torch.bincount(flat, minlength=len(target) * n * n).view(len(target), n, n).double()
    tp = mat.diagonal(dim1=1, dim2=2)
    union = mat.sum(2) + mat.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.zeros_like(tp)).sum(1)
    count = present.sum(1)
    return torch.where(count > 0, iou / count.clamp_min(1), torch.ones_like(iou))


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
    """The confusion matrix of argmax predictions over labelled pixels; each image's own mIoU."""

    def __init__(self, num_classes: int, ignore_index: int) -> None:
        self.matrix = ConfusionMatrix(num_classes, ignore_index)
        self.scores: list[Any] = []  # per batch a tensor of image mIoUs; floats after reduce()

    def update(self, outputs: dict[str, torch.Tensor], targets: torch.Tensor) -> None:
        pred = outputs["out"].argmax(1)
        self.matrix.update(pred, targets)
        self.scores.append(image_iou(pred, targets, self.matrix.num_classes, self.matrix.ignore_index))

    def reduce(self) -> SegmentationMeter:
        self.matrix.reduce()
        self.scores = gather_in_order(self.image_scores())
        return self

    def compute(self) -> dict[str, Any]:
        return self.matrix.compute()

    def image_scores(self) -> list[float]:
        return [float(v) for s in self.scores for v in (s.tolist() if isinstance(s, torch.Tensor) else [s])]


# --------------------------------------------------------------------------- binary segmentation
def binary_prediction(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """0/1 (long) N×H×W from a binary model's N×1×H×W (or N×H×W) logits: 1 where sigmoid >= ``threshold``."""
    logit = logits[:, 0] if logits.dim() == 4 else logits
    return (logit.float().sigmoid() >= threshold).long()


def binary_scores(mat: torch.Tensor) -> dict[str, float]:
    """The foreground's ``iou``, ``dice``, ``precision``, ``recall`` and the ``pixel_accuracy`` from a 2×2
    confusion matrix (rows labels, columns predictions, index 1 the foreground); NaN where nothing was
    there to measure (no foreground predicted: precision; none labelled: recall; neither: IoU, Dice)."""
    m = mat.detach().to("cpu", torch.float64)
    tn, fp, fn, tp = (float(v) for v in m.flatten())

    def ratio(num: float, den: float) -> float:
        return num / den if den > 0 else math.nan

    return {"iou": ratio(tp, tp + fp + fn), "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
            "pixel_accuracy": ratio(tp + tn, tp + tn + fp + fn)}


def binary_image_iou(pred: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Per image of an N×H×W batch, the foreground IoU over its labelled pixels; 1.0 for an image with
    foreground in neither its labels nor its prediction (nothing to find, nothing found)."""
    keep = (target != ignore_index) & (target >= 0) & (target < 2)
    fg_true, fg_pred = ((target == 1) & keep).flatten(1), ((pred == 1) & keep).flatten(1)
    inter = (fg_true & fg_pred).sum(1).double()
    union = (fg_true | fg_pred).sum(1).double()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))


class BinarySegmentationMeter(SegmentationMeter):
    """A binary model's meter: its one sigmoid channel thresholded at ``threshold``, counted in a 2×2
    confusion matrix (background, foreground); ``compute`` gives the foreground's IoU, Dice, precision and
    recall (``binary_scores``) beside the two-class figures; each image's own foreground IoU."""

    def __init__(self, threshold: float = 0.5, ignore_index: int = 255) -> None:
        super().__init__(2, ignore_index)
        self.threshold = threshold

    def update(self, outputs: dict[str, torch.Tensor] | torch.Tensor, targets: torch.Tensor) -> None:
        logits = outputs["out"] if isinstance(outputs, dict) else outputs
        pred = binary_prediction(logits, self.threshold)
        self.matrix.update(pred, targets)
        self.scores.append(binary_image_iou(pred, targets, self.matrix.ignore_index))

    def compute(self) -> dict[str, Any]:
        both = self.matrix.compute()  # per class: background, foreground
        return {**binary_scores(self.matrix.mat), "threshold": self.threshold, "miou": both["miou"],
                "class_iou": both["iou"], "class_accuracy": both["class_accuracy"],
                "mean_accuracy": both["mean_accuracy"]}


# --------------------------------------------------------------------------------- classification
def informative_k(k: Optional[int], num_classes: int) -> Optional[int]:
    """``k`` for top-k accuracy, or None when k >= the number of classes: every label is then in the top k,
    and the figure is 1 whatever the model does."""
    return k if k is not None and k < num_classes else None


class ClassificationMeter(Meter):
    """A confusion matrix (label rows x predicted columns) plus top-k hits (none when k covers every class)."""

    def __init__(self, num_classes: int, k: Optional[int]) -> None:
        self.matrix = ConfusionMatrix(num_classes, ignore_index=-100)
        self.k = informative_k(k, num_classes)
        self.topk = torch.zeros(2, dtype=torch.int64)  # (hits, count)
        self.scores: list[Any] = []  # per batch the probabilities of the true class; floats after reduce()

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.matrix.update(outputs.argmax(1), targets)
        if self.k is not None:
            top = outputs.topk(self.k, dim=1).indices
            hits = (top == targets[:, None]).any(1).sum()
            self.topk = self.topk.to(targets.device) + torch.stack([hits, targets.new_tensor(len(targets))])
        self.scores.append(outputs.detach().float().softmax(1).gather(1, targets[:, None].long())[:, 0])

    def reduce(self) -> ClassificationMeter:
        self.matrix.reduce()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.topk, op=dist.ReduceOp.SUM)
        self.scores = gather_in_order(self.image_scores())
        return self

    def image_scores(self) -> list[float]:
        """The probability each image's true class was given."""
        return [float(v) for s in self.scores for v in (s.tolist() if isinstance(s, torch.Tensor) else [s])]

    def compute(self) -> dict[str, Any]:
        return classification_metrics(self.matrix.mat, self.topk, self.k)


def classification_metrics(mat: torch.Tensor, topk: torch.Tensor, k: Optional[int]) -> dict[str, Any]:
    """accuracy, top-k accuracy (only for k below the number of classes), per-class precision/recall/F1 (NaN
    where undefined) and their macro means."""
    mat = mat.detach().to("cpu", torch.float64)
    tp, labelled, predicted = mat.diag(), mat.sum(1), mat.sum(0)
    nan = torch.full_like(tp, math.nan)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), nan)
    recall = torch.where(labelled > 0, tp / labelled.clamp_min(1), nan)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom, torch.where(labelled > 0, 0.0, nan))
    total = float(mat.sum())
    hits, count = (int(v) for v in topk.tolist())
    k = informative_k(k, len(tp))
    return {
        "accuracy": float(tp.sum()) / total if total else math.nan,
        **({f"top{k}": hits / count if count else math.nan} if k is not None else {}),
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
        # after compute(): COCOeval's interpolated precision at IoU 0.5 (classes x recall points), and
        # the recall points; None when nothing was detected or nothing labelled
        self.pr_precision: Optional[np.ndarray] = None
        self.pr_recall: Optional[np.ndarray] = None

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
        """{ap, ap50, ap75, ap_small, ap_medium, ap_large, ap_per_class, ap50_per_class, precision_per_class,
        recall_per_class, boxes_per_class[, mask_ap, mask_ap50]} over classes 1..K (per-class lists have one
        entry per object class, background left out; precision and recall at IoU 0.5 and score >= 0.5)."""
        coco, dets, with_masks = self._coco()
        metrics = self._evaluate(coco, dets, "bbox")
        # precision and recall of the boxes predictions.png draws (IoU 0.5, score >= 0.5), per class
        mat = self.confusion()
        boxes, found, hits = mat[1:].sum(1), mat[:, 1:].sum(0), np.diag(mat)[1:]
        metrics["precision_per_class"] = [float(h / f) if f else float("nan") for h, f in zip(hits, found)]
        metrics["recall_per_class"] = [float(h / b) if b else float("nan") for h, b in zip(hits, boxes)]
        metrics["boxes_per_class"] = [int(b) for b in boxes]
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
        if iou_type == "bbox":
            self.pr_precision, self.pr_recall = precision[0].T.copy(), np.asarray(ev.params.recThrs)
        return metrics

    def confusion(self, iou_threshold: float = 0.5, score_threshold: float = 0.5) -> np.ndarray:
        """Box counts ``mat[true, predicted]`` over the classes with background at 0: a detection scoring
        at least ``score_threshold`` matched one to one (highest IoU first, whatever its class) to a
        ground-truth box at IoU >= ``iou_threshold`` counts at (its box's class, its class); a box left
        unmatched is missed (true class, background); a detection left unmatched is a false alarm
        (background, its class). ``mat[0, 0]`` stays 0. Crowd regions are no box to find, and
        detections on them count nowhere."""
        k = self.num_classes
        mat = np.zeros((k, k), np.int64)
        for im in self.images:
            matched, missed, extra = match_image(im["gt"], im["dt"], iou_threshold, score_threshold)
            for g, d in matched:
                mat[g, d] += 1
            for g in missed:
                mat[g, 0] += 1
            for d in extra:
                mat[0, d] += 1
        return mat

    def image_scores(self, iou_threshold: float = 0.5, score_threshold: float = 0.5) -> list[float]:
        """Per image, F1 of its detections (score >= ``score_threshold``) against its boxes: a hit is a
        match at IoU >= ``iou_threshold`` of the right class; 1.0 for an image with neither."""
        scores = []
        for im in self.images:
            matched, missed, extra = match_image(im["gt"], im["dt"], iou_threshold, score_threshold)
            hits = sum(g == d for g, d in matched)
            errors = 2 * len(matched) - 2 * hits + len(missed) + len(extra)  # a wrong class: a miss and a false alarm
            scores.append(2 * hits / (2 * hits + errors) if hits + errors else 1.0)
        return scores


def match_image(gt: dict[str, np.ndarray], dt: dict[str, np.ndarray], iou_threshold: float = 0.5,
                score_threshold: float = 0.5) -> tuple[list[tuple[int, int]], list[int], list[int]]:
    """One image's boxes against its detections scoring at least ``score_threshold``, class-agnostic and
    one to one, highest IoU first: ((true label, predicted label) of each match, labels of the boxes left
    unmatched, labels of the detections left unmatched). Crowd boxes are left out, and so are detections
    that overlap one at IoU >= ``iou_threshold``."""
    boxes = gt["boxes"].reshape(-1, 4)
    labels = np.asarray(gt["labels"]).reshape(-1)
    crowd = np.asarray(gt.get("iscrowd", np.zeros(len(labels), np.int64))).reshape(-1).astype(bool)
    keep = np.asarray(dt.get("scores", np.zeros(0)), np.float64).reshape(-1) >= score_threshold
    det_boxes = dt["boxes"].reshape(-1, 4)[keep]
    det_labels = np.asarray(dt["labels"]).reshape(-1)[keep]
    if crowd.any() and len(det_boxes):
        on_crowd = _iou(boxes[crowd], det_boxes).max(0) >= iou_threshold
        det_boxes, det_labels = det_boxes[~on_crowd], det_labels[~on_crowd]
    boxes, labels = boxes[~crowd], labels[~crowd]
    iou = _iou(boxes, det_boxes)
    pairs = np.argwhere(iou >= iou_threshold)
    pairs = pairs[np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable")]
    used_g: set[int] = set()
    used_d: set[int] = set()
    matched = []
    for g, d in pairs.tolist():
        if g not in used_g and d not in used_d:
            used_g.add(g)
            used_d.add(d)
            matched.append((int(labels[g]), int(det_labels[d])))
    missed = [int(labels[g]) for g in range(len(labels)) if g not in used_g]
    extra = [int(det_labels[d]) for d in range(len(det_labels)) if d not in used_d]
    return matched, missed, extra


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes, len(a) x len(b)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return box_iou(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)).numpy()
