"""Stand-in checkpoints for offline tests, benchmarks and demos.

A stand-in is a torchvision architecture built with a fixed seed and ``weights=None`` and saved under
the official checkpoint file name in ``$TORCH_HOME/hub/checkpoints``, so torchvision's own loading path
(enum -> cache hit -> strict ``load_state_dict``) runs for real; a timm one is saved where huggingface_hub's
cache keeps the model's default weights, so timm's pretrained path loads it. Its values are random: it
proves two pipelines agree, never that a model is accurate. Its BatchNorm statistics are calibrated on random
images so that eval-mode activations are well scaled, as in a trained network. ``seg-transfer weights
verify`` reports it as a hash mismatch.
"""
from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import torch
import torchvision


@torch.no_grad()
def calibrate_batchnorm(net: torch.nn.Module, seed: int = 0, batches: int = 4, size: int = 128) -> None:
    """Set BatchNorm running statistics from a few random images, as training would have.

    A fresh network keeps mean 0 / variance 1, which in eval mode scales activations arbitrarily (a
    stand-in MobileNet then predicts one class everywhere); a trained checkpoint never looks like that.
    Models whose forward does not take an image batch (detectors) are left as they are.
    """
    bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batches
    generator = torch.Generator().manual_seed(seed)
    net.train()
    try:
        for _ in range(batches):
            # Smooth random images, normalised as ImageNet photos are: roughly unit-variance inputs.
            low = torch.rand(2, 3, size // 8, size // 8, generator=generator)
            x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
            net((x - 0.45) / 0.225)
    except (TypeError, ValueError, AssertionError):  # not an image-batch model
        for bn in bns:
            bn.reset_running_stats()
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        net.eval()


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
    # Inception v3's auxiliary head needs its own input size (299): smaller images fail inside it.
    calibrate_batchnorm(net, seed, size=299 if model == "inception_v3" else 128)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    return path


# A fixed commit name for stand-ins in the Hugging Face cache (real snapshots are named by the hub's commit).
STANDIN_COMMIT = hashlib.sha1(b"seg_transfer stand-in").hexdigest()


def build_timm_standin(arch: str, seed: int = 0) -> Path:
    """Write the stand-in for timm model ``arch``'s default pretrained weights into the Hugging Face cache
    (huggingface_hub's folder and layout: ``models--<org>--<name>/refs/main`` naming a snapshot that holds
    the file), once; returns its path. timm's real loading path finds it there offline."""
    import safetensors.torch
    import timm
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name
    from timm.models._hub import HF_SAFE_WEIGHTS_NAME

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not cfg.hf_hub_id:
        raise ValueError(f"timm names no pretrained weights on the Hugging Face hub for '{arch}'")
    repo = str(cfg.hf_hub_id).partition("@")[0]
    folder = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")
    path = folder / "snapshots" / STANDIN_COMMIT / (cfg.hf_hub_filename or HF_SAFE_WEIGHTS_NAME)
    if path.exists():
        return path
    torch.manual_seed(seed)
    net = timm.create_model(arch, pretrained=False)
    calibrate_batchnorm(net, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part")
    safetensors.torch.save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp))
    os.replace(tmp, path)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(STANDIN_COMMIT)
    return path
