"""Self-describing model files: weights + the config that rebuilds the model + class names +
preprocessing + library versions, loadable with ``torch.load(weights_only=True)``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import torch
import torchvision
from torch import nn

from ..errors import BadInputError
from ..io import atomic_path
from ..version import __version__
from . import weights as W
from .build import build_model, model_info
from .preprocess import Preprocess

FORMAT = "seg_transfer.checkpoint/1"
# What ``seg-transfer pretrain`` adds to its checkpoints: {method, epochs, images, ...}; the transfer report
# of a backbone taken from such a file says so.
PRETRAIN_KEY = "pretrain"


def model_payload(model: nn.Module) -> dict[str, Any]:
    """Everything needed to rebuild ``model`` without any config file or download."""
    info = model_info(model)
    config = dict(info.config)
    # Rebuild from this file alone: no pretrained download, same classes and aux head.
    config.update(weights=None, backbone_weights=None, classes=list(info.classes),
                  num_classes=len(info.classes), aux_loss=getattr(model, "aux_classifier", None) is not None)
    return {
        "format": FORMAT,
        "task": info.task,
        "model": config,
        "classes": list(info.classes),
        "preprocess": info.preprocess.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        # str(): torch's TorchVersion is a str subclass that weights_only loading refuses.
        "versions": {"seg_transfer": str(__version__), "torch": str(torch.__version__),
                     "torchvision": str(torchvision.__version__)},
    }


def save_checkpoint(path: Union[str, os.PathLike], model: nn.Module, **extra: Any) -> Path:
    """Write ``model`` (and e.g. optimizer state in ``extra``) atomically."""
    with atomic_path(path) as tmp:
        torch.save({**model_payload(model), **extra}, tmp)
    return Path(path)


def read_checkpoint(path: Union[str, os.PathLike]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such checkpoint file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle of foreign objects, not a torch file...
        raise BadInputError(f"{path}: cannot read checkpoint ({str(err).splitlines()[0]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise BadInputError(f"{path}: not a seg_transfer checkpoint (a plain state dict belongs in "
                            f"model.weights instead)")
    return ckpt


def is_checkpoint(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` is a seg_transfer checkpoint (memory-mapped: the tensors are not read)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a torch zip file (a legacy .pth, truncated, not torch at all)
        return False
    return isinstance(ckpt, dict) and ckpt.get("format") == FORMAT


def load_checkpoint(path: Union[str, os.PathLike], device: Union[str, torch.device] = "cpu") -> nn.Module:
    """Rebuild the model saved in ``path`` (eval mode) with its class names and preprocessing."""
    return rebuild(read_checkpoint(path), path).to(device).eval()


def rebuild(ckpt: dict[str, Any], path: Union[str, os.PathLike]) -> nn.Module:
    """The model a ``read_checkpoint`` dict describes, its weights loaded (``path``: for error messages)."""
    model = build_model(ckpt["model"])
    W.load_into(model, ckpt["state_dict"], path)
    info = model_info(model)
    info.preprocess = Preprocess.from_dict(ckpt["preprocess"])
    info.classes = list(ckpt["classes"])
    return model
