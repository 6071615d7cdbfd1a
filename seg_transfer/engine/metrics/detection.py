"""Detection's meter: COCO AP through pycocotools' ``COCOeval`` (with its precision-recall curves), a box
confusion matrix matched at IoU 0.5, and each image's F1 of its detections."""
from __future__ import annotations

import contextlib
import io
from typing import Any, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.ops import box_iou

from ..distributed import is_dist, unshard, world_size
from .base import Meter

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
