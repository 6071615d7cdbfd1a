"""Where every task's metric is computed, as a ``Meter`` (``update`` per batch, ``reduce`` across ranks,
``compute`` once), one module a task: ``segmentation`` (mIoU from a streaming confusion matrix of pixels; a
binary model's foreground IoU, Dice, precision and recall at a threshold from a 2×2 one), ``classification``
(accuracy / top-k / per-class F1 from a confusion matrix of images), ``detection`` (COCO AP through
pycocotools' ``COCOeval``, with its precision-recall curves, and a box confusion matrix matched at IoU 0.5);
``base`` holds the contract and the confusion matrix they share. Every meter also scores each image on its
own (``image_scores``, in dataset order): the run report shows the best and worst val images by it."""
from .base import ConfusionMatrix, Meter, gather_in_order
from .classification import ClassificationMeter, classification_metrics, informative_k
from .detection import STATS, CocoMeter, match_image
from .segmentation import (
    BinarySegmentationMeter,
    SegmentationMeter,
    binary_image_iou,
    binary_prediction,
    binary_scores,
    image_iou,
)

__all__ = ["STATS", "BinarySegmentationMeter", "ClassificationMeter", "CocoMeter", "ConfusionMatrix", "Meter",
           "SegmentationMeter", "binary_image_iou", "binary_prediction", "binary_scores", "classification_metrics",
           "gather_in_order", "image_iou", "informative_k", "match_image"]
