"""Export a model to ONNX or TorchScript, with what inference needs (task, class names, preprocessing)
stored in the file: ONNX metadata property ``seg_transfer``, TorchScript extra file ``seg_transfer.json``.

The exported graph takes the *preprocessed* batch (resized, scaled to [0, 1], normalised, as the
metadata's ``preprocess`` says) and returns: segmentation ``logits`` NxCxHxW (``binary`` in the metadata:
Nx1xHxW, the foreground's logit, for the two classes listed), classification ``logits``
NxC, detection ``boxes`` Nx4, ``labels`` N, ``scores`` N for one image (torchvision's detectors export
with a batch of one).
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError, unknown
from ..io import save_bytes
from ..models.build import model_info
from ..version import __version__

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
META_KEY = "seg_transfer"
DEFAULT_OPSET = 18
# ONNX inputs and outputs by task: what a user's own runtime script feeds and reads.
OUTPUTS = {"segmentation": ["logits"], "classification": ["logits"], "detection": ["boxes", "labels", "scores"]}
# Example input size when the preprocessing does not fix one (segmentation, detection without resize).
SAMPLE_SIZE = 320
# A dynamic-size export generalises from its example: where two feature maps of the example happen to have
# equal sizes (an FPN adds a lateral map to the upsampled coarser one), the exporter may take the equality
# for a rule, and the graph then fails on sizes where it does not hold (ceil(h/4) odd: "125 by 126").
# An example whose side is 1 more than a multiple of the largest stride is odd at every level below it, so
# no such equality holds by accident.
MAX_STRIDE = 32


def requires(module: str, extra: str) -> Any:
    """Import an optional dependency, or fail in one line naming the extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{module} is not installed: pip install \"seg_transfer[{extra}]\" "
                          f"(or pip install -e \".[{extra}]\" in a checkout)") from None


class _Logits(nn.Module):
    """The segmentation model's ``out`` only (the aux head, unused at inference, drops out of the graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


class _Detections(nn.Module):
    """One image in, torchvision's boxes, labels and scores out (as three tensors)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if torch.jit.is_scripting():  # scripted torchvision detectors return (losses, detections)
            out = self.model([image])[1][0]
        else:
            out = self.model([image])[0]
        return out["boxes"], out["labels"], out["scores"]


def metadata(model: nn.Module) -> dict[str, Any]:
    """What an exported file carries: task, classes, preprocessing, output names, the producing version, and
    whether a segmentation model is binary (one sigmoid channel)."""
    info = model_info(model)
    return {"task": info.task, "classes": list(info.classes), "preprocess": info.preprocess.to_dict(),
            "outputs": OUTPUTS[info.task], "input": "input", "producer": f"seg_transfer {__version__}",
            "binary": bool(info.binary)}


def graph_module(model: nn.Module) -> nn.Module:
    """The model as a module of tensors in, tensors out (what exporters trace)."""
    task = model_info(model).task
    if task == "segmentation":
        return _Logits(model)
    if task == "detection":
        return _Detections(model)
    return model


def odd_size(size: int) -> int:
    """``size`` moved to the nearest ``MAX_STRIDE * k + 1`` (odd at every stride up to MAX_STRIDE)."""
    return max(1, round((size - 1) / MAX_STRIDE)) * MAX_STRIDE + 1


def sample_input(model: nn.Module, dynamic: bool = False) -> torch.Tensor:
    """A preprocessed example input of the size the model is used at; ``dynamic`` (segmentation): moved to
    sizes odd at every stride, so that a dynamic-size export holds for every input size (``MAX_STRIDE``)."""
    info = model_info(model)
    pre = info.preprocess
    size = pre.crop_size or pre.resize_size or SAMPLE_SIZE
    h, w = size, size if info.task == "classification" else size * 4 // 3
    if dynamic and info.task == "segmentation":
        h, w = odd_size(h), odd_size(w)
    x = torch.rand(3, h, w, device=next(model.parameters()).device)
    return x if info.task == "detection" else x[None]


def export_model(model: nn.Module, out: Union[str, os.PathLike], fmt: str = "onnx", *,
                 opset: int = DEFAULT_OPSET, dynamic: bool = True) -> Path:
    """Write ``model`` as ``fmt`` (onnx or torchscript) to ``out``, metadata inside; returns the path.

    ``dynamic`` leaves batch and spatial size free (segmentation, classification); detectors always
    take one image of any size. The model itself is not modified (a copy is exported).
    """
    if fmt not in FORMATS:
        raise unknown("export format", fmt, FORMATS, "--format")
    if not hasattr(model, "info"):
        raise ConfigError("export needs a model built by seg_transfer (it carries classes and preprocessing)")
    model = copy.deepcopy(model).cpu().eval()
    data = export_bytes(model, fmt, opset=opset, dynamic=dynamic)
    return save_bytes(data, Path(out))


def export_bytes(model: nn.Module, fmt: str, *, opset: int = DEFAULT_OPSET, dynamic: bool = True) -> bytes:
    """The exported file's bytes (``model`` in eval mode, on the CPU)."""
    meta = metadata(model)
    graph = graph_module(model)
    x = sample_input(model, dynamic=dynamic and fmt == "onnx")
    with warnings.catch_warnings():
        # tracing warns about every shape read it records as a constant; the parity tests are the check
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            return _torchscript(graph, x, meta)
        return _onnx(graph, x, meta, opset=opset, dynamic=dynamic)


def _torchscript(graph: nn.Module, x: torch.Tensor, meta: dict[str, Any]) -> bytes:
    try:
        scripted = torch.jit.script(graph)
    except Exception:  # noqa: BLE001 - modules with Python-only control flow: trace instead
        scripted = torch.jit.trace(graph, x, check_trace=False, strict=False)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf, _extra_files={f"{META_KEY}.json": json.dumps(meta)})
    return buf.getvalue()


def _onnx(graph: nn.Module, x: torch.Tensor, meta: dict[str, Any], *, opset: int, dynamic: bool) -> bytes:
    onnx = requires("onnx", "onnx")
    detection = meta["task"] == "detection"
    with torch.inference_mode(False), torch.no_grad():
        buf = io.BytesIO()
        if detection:
            # torchvision's detectors export through the TorchScript-based exporter (their
            # post-processing is data-dependent); one image of any size
            torch.onnx.export(graph, (x,), buf, dynamo=False,  # type: ignore[arg-type]  # file objects work
                              opset_version=max(opset, 11), input_names=["input"],
                              output_names=meta["outputs"],
                              dynamic_axes={"input": {1: "height", 2: "width"}, "boxes": {0: "n"},
                                            "labels": {0: "n"}, "scores": {0: "n"}})
            proto = onnx.load_from_string(buf.getvalue())
        else:
            requires("onnxscript", "onnx")
            dims = None
            if dynamic:
                batch, h, w = (torch.export.Dim("batch", min=1, max=1024), torch.export.Dim.DYNAMIC,
                               torch.export.Dim.DYNAMIC)
                dims = ({0: batch, 2: h, 3: w},) if x.dim() == 4 else ({0: batch},)
            program = torch.onnx.export(graph, (x,), dynamo=True, opset_version=opset, input_names=["input"],
                                        output_names=meta["outputs"], dynamic_shapes=dims, verbose=False,
                                        optimize=True)
            if program is None:
                raise RuntimeError("torch.onnx.export returned no program")
            proto = program.model_proto
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    return proto.SerializeToString()


def read_metadata(props: dict[str, str], where: str) -> dict[str, Any]:
    """The ``seg_transfer`` metadata of an exported file, checked; ``where`` names the file in errors."""
    if META_KEY not in props:
        raise ConfigError(f"{where}: no '{META_KEY}' metadata: export it with `seg-transfer export` "
                          "(it stores the classes and preprocessing inference needs)")
    meta = json.loads(props[META_KEY])
    if meta.get("task") not in OUTPUTS:
        raise ConfigError(f"{where}: metadata names an unknown task {meta.get('task')!r}")
    return dict(meta)


def default_path(source: Optional[Union[str, os.PathLike]], name: str, fmt: str) -> Path:
    """Where ``export`` writes without ``--out``: beside the checkpoint, or ``<model name><suffix>`` here."""
    if source:
        return Path(source).with_suffix(FORMATS[fmt])
    return Path(name + FORMATS[fmt])
