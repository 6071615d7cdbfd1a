"""seg_transfer: transfer learning for dense prediction on torchvision models."""
from __future__ import annotations

from .version import __version__

__all__ = ["create_model", "Predictor", "load_checkpoint", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import seg_transfer` (and the CLI's --help) does not pay for importing torch.
    if name == "create_model":
        from .transfer.sources import create_model
        return create_model
    if name == "Predictor":
        from .predict import Predictor
        return Predictor
    if name == "load_checkpoint":
        from .models.checkpoint import load_checkpoint
        return load_checkpoint
    raise AttributeError(name)
