"""Stand-in checkpoints for offline tests, benchmarks and demos.

A stand-in is a torchvision architecture built with a fixed seed and ``weights=None`` and saved under
the official checkpoint file name in ``$TORCH_HOME/hub/checkpoints``, so torchvision's own loading path
(enum -> cache hit -> strict ``load_state_dict``) runs for real. Its values are random: it proves two
pipelines agree, never that a model is accurate. ``seg-transfer weights verify`` reports it as a
hash mismatch.
"""
from __future__ import annotations

import inspect
import os
from pathlib import Path

import torch
import torchvision


def build_standin(model: str, entry: str = "DEFAULT", seed: int = 0) -> Path:
    """Write the stand-in for torchvision builder ``model``'s weights ``entry`` into the current
    TORCH_HOME (once); returns its path."""
    enum = torchvision.models.get_model_weights(model)
    weights = enum.DEFAULT if entry == "DEFAULT" else enum[entry]
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if path.exists():
        return path
    kwargs = {"weights": None, "num_classes": len(weights.meta["categories"])}
    params = inspect.signature(torchvision.models.get_model_builder(model)).parameters
    if "aux_loss" in params:
        kwargs["aux_loss"] = True  # torchvision's segmentation checkpoints carry the aux head
    if "weights_backbone" in params:
        kwargs["weights_backbone"] = None
    torch.manual_seed(seed)
    net = torchvision.models.get_model(model, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    return path
