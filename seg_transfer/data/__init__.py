"""Datasets for segmentation, detection and classification: on-disk formats, splits, augmentation, data checks.

Each task has its module (``segmentation``, ``detection``, ``classification``: dataset, rules, transforms,
collate); each format its file, picked by name through ``registry``; ``checks`` scans a whole dataset.
"""
from .checks import check_dataset, label_frequencies
from .coco import build_coco
from .common import DataSplits
from .folder import build_folder
from .problems import DataError, Problem
from .registry import DATASETS, build_dataset
from .segmentation import SegCollate, SegDataset, SegTransform, build_transforms
from .transforms import build_pipeline
from .voc import VOC_CLASSES, build_voc

__all__ = ["DATASETS", "VOC_CLASSES", "DataError", "DataSplits", "Problem", "SegCollate", "SegDataset",
           "SegTransform", "build_coco", "build_dataset", "build_folder", "build_pipeline",
           "build_transforms", "build_voc", "check_dataset", "label_frequencies"]
