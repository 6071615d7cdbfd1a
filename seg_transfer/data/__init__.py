"""Datasets for segmentation fine-tuning: formats, splits, augmentation and data checks."""
from .checks import DataError, Problem, check_dataset, label_frequencies
from .coco import build_coco
from .folder import DataSplits, SegDataset, build_folder
from .registry import DATASETS, build_dataset
from .transforms import SegCollate, SegTransform, build_pipeline, build_transforms
from .voc import VOC_CLASSES, build_voc

__all__ = ["DATASETS", "VOC_CLASSES", "DataError", "DataSplits", "Problem", "SegCollate", "SegDataset",
           "SegTransform", "build_coco", "build_dataset", "build_folder", "build_pipeline",
           "build_transforms", "build_voc", "check_dataset", "label_frequencies"]
