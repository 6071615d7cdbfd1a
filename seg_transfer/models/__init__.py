"""Model assembly: backbones, necks, heads, torchvision's zoo, weights and preprocessing."""
from .build import ModelInfo, SegmentationModel, build_model, create_model, model_names

__all__ = ["ModelInfo", "SegmentationModel", "build_model", "create_model", "model_names"]
