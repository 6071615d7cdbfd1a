"""Model assembly: backbones, the stage map, necks, each task's heads and zoo, weights and preprocessing."""
from .build import TASKS, ModelInfo, build_model, model_names

__all__ = ["TASKS", "ModelInfo", "build_model", "model_names"]
