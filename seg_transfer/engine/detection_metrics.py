"""COCO detection metrics through pycocotools' ``COCOeval``: AP, AP50, AP75, AP by object size, per-class
AP and AP50, and mask AP when both ground truth and predictions carry instance masks."""
from __future__ import annotations

import contextlib
import io
from typing import Any, Optional, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from . import distributed as D

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


class CocoMeter:
    """Collects ground truth and detections per image; ``compute`` runs COCOeval once at the end."""

    def __init__(self, num_classes: int, masks: bool = False) -> None:
        self.num_classes = num_classes  # including background (label 0)
        self.masks = masks
        self.images: list[dict[str, Any]] = []  # {"gt": {...numpy}, "dt": {...numpy}, "size": (h, w)}

    def update(self, outputs: Sequence[dict[str, torch.Tensor]], targets: Sequence[dict[str, torch.Tensor]],
               sizes: Optional[Sequence[tuple[int, int]]] = None) -> None:
        for k, (out, tgt) in enumerate(zip(outputs, targets)):
            gt = {key: v.detach().cpu().numpy() for key, v in tgt.items() if key in ("boxes", "labels", "iscrowd", "masks")}
            dt = {key: v.detach().float().cpu().numpy() if key != "labels" else v.cpu().numpy()
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

    def reduce(self) -> "CocoMeter":
        if D.is_dist():
            gathered: list[Any] = [None] * D.world_size()
            torch.distributed.all_gather_object(gathered, self.images)
            self.images = [item for part in gathered for item in part]
        return self

    def _coco(self) -> tuple[COCO, list[dict[str, Any]], bool]:
        images, anns, dets = [], [], []
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
