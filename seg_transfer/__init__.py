"""seg_transfer: transfer learning for dense prediction on torchvision models."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["create_model", "Predictor", "load_checkpoint", "__version__"]


def __getattr__(name: str):
    # Lazy, so `import seg_transfer` (and the CLI's --help) does not pay for importing torch.
    if name == "create_model":
        from .models import create_model
        return create_model
    if name in ("Predictor", "load_checkpoint"):
        from . import predict
        return getattr(predict, name)
    raise AttributeError(name)
