"""Where a model runs: eager PyTorch (plain, or the fast path), onnxruntime, OpenVINO, or an exported
TorchScript file. A runner maps a preprocessed batch to the task's raw outputs (segmentation logits
NxCxHxW, classification logits NxC, detection one dict of boxes/labels/scores per image), so each task's
prediction code is the same whatever runs the model."""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, unknown
from ..models.build import model_info
from ..models.preprocess import Preprocess
from .export import FORMATS, META_KEY, export_model, read_metadata, requires
from .fast import optimize

BACKENDS = ("torch", "onnxruntime", "openvino")
Batch = Union[torch.Tensor, Sequence[torch.Tensor]]
CPU = torch.device("cpu")


@dataclass(frozen=True)
class ModelMeta:
    """What inference needs besides the weights."""

    task: str
    classes: list[str]
    preprocess: Preprocess
    binary: bool = False  # segmentation: one sigmoid channel (the foreground's logit) for the two classes

    @classmethod
    def of(cls, model: nn.Module) -> ModelMeta:
        info = model_info(model)
        return cls(str(info.task), list(info.classes), info.preprocess, bool(info.binary))

    @classmethod
    def from_dict(cls, meta: dict[str, Any]) -> ModelMeta:
        # files exported before binary models existed carry no "binary": they are multi-class
        return cls(meta["task"], list(meta["classes"]), Preprocess.from_dict(meta["preprocess"]),
                   bool(meta.get("binary", False)))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def runtime_failure(backend: str, path: Union[str, os.PathLike], shape: Sequence[int], err: Exception) -> ConfigError:
    """A runtime's failure on an exported file as one line: which file, which input size, the runtime's
    own first line (its messages run to a C++ source path and a stack)."""
    return ConfigError(f"{path}: {backend} failed on a {'x'.join(map(str, shape))} input: {_first_line(err)} "
                       "(a file exported by an older seg_transfer may need `seg-transfer export` again)")


class Runner:
    """A model behind one call: ``runner(batch)`` -> the task's raw outputs, on the CPU for files."""

    backend = "torch"
    meta: ModelMeta
    device = CPU

    @property
    def classes(self) -> list[str]:
        return self.meta.classes

    def __call__(self, batch: Batch) -> Any:
        raise NotImplementedError


class TorchRunner(Runner):
    """Eager PyTorch. ``fast``: a copy with BatchNorm folded into the convolutions, run channels-last."""

    def __init__(self, model: nn.Module, fast: bool = False):
        self.meta = ModelMeta.of(model)
        self.device = next(model.parameters()).device
        self.fast = fast
        self.model = optimize(model) if fast else model.eval()

    @torch.inference_mode()
    def __call__(self, batch: Batch) -> Any:
        if self.meta.task == "detection":
            return self.model([x.to(self.device) for x in batch])
        assert isinstance(batch, torch.Tensor)
        x = batch.to(self.device)
        if self.fast and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.model(x)
        return out["out"] if self.meta.task == "segmentation" else out


def as_runner(model: Union[nn.Module, Runner]) -> Runner:
    return model if isinstance(model, Runner) else TorchRunner(model)


def _jit_load(path: Union[str, os.PathLike], device: torch.device) -> tuple[Any, str]:
    """A TorchScript file and its metadata JSON. torch deprecates TorchScript in favour of torch.export;
    the user chose the format (the README recommends ONNX), so its FutureWarning is not repeated here."""
    extra = {f"{META_KEY}.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            module = torch.jit.load(str(path), map_location=device, _extra_files=extra)
        except RuntimeError as err:
            raise ConfigError(f"--model-file {path}: not a readable TorchScript file ({_first_line(err)})") from None
    return module, extra[f"{META_KEY}.json"]


def _detections(outputs: Sequence[Any]) -> dict[str, torch.Tensor]:
    boxes, labels, scores = (torch.as_tensor(np.asarray(o)) for o in outputs)
    return {"boxes": boxes.float(), "labels": labels.long(), "scores": scores.float()}


class TorchScriptRunner(Runner):
    """A file written by ``export --format torchscript``."""

    def __init__(self, path: Union[str, os.PathLike], device: torch.device = CPU):
        self.module, meta = _jit_load(path, device)
        self.meta = ModelMeta.from_dict(read_metadata({META_KEY: meta} if meta else {}, str(path)))
        self.device = device

    @torch.inference_mode()
    def __call__(self, batch: Batch) -> Any:
        if self.meta.task == "detection":
            return [_detections(self.module(x.to(self.device))) for x in batch]
        assert isinstance(batch, torch.Tensor)
        return self.module(batch.to(self.device))


class OnnxRunner(Runner):
    """onnxruntime with its full graph optimisations; CUDA through its CUDA provider when asked."""

    backend = "onnxruntime"

    def __init__(self, path: Union[str, os.PathLike], device: torch.device = CPU,
                 threads: int = 0):
        ort = requires("onnxruntime", "onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.log_severity_level = 3  # warnings about unused initialisers are noise to a user
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ConfigError("--backend onnxruntime --device cuda needs onnxruntime-gpu (pip install onnxruntime-gpu)")
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as err:  # noqa: BLE001 - onnxruntime's InvalidProtobuf/Fail are not importable types
            raise ConfigError(f"--model-file {path}: onnxruntime cannot read it ({_first_line(err)}): is it an "
                              "ONNX file from `seg-transfer export`?") from None
        self.meta = ModelMeta.from_dict(read_metadata(self.session.get_modelmeta().custom_metadata_map, str(path)))
        self.path = path

    def _run(self, x: torch.Tensor) -> list[Any]:
        try:
            return self.session.run(None, {"input": x.cpu().numpy()})
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped Fail/RuntimeException
            raise runtime_failure(self.backend, self.path, x.shape, err) from None

    def __call__(self, batch: Batch) -> Any:
        if self.meta.task == "detection":
            return [_detections(self._run(x)) for x in batch]
        assert isinstance(batch, torch.Tensor)
        return torch.from_numpy(self._run(batch)[0])


class OpenVinoRunner(Runner):
    """OpenVINO reading the ONNX file directly, compiled for the CPU with the latency hint."""

    backend = "openvino"

    def __init__(self, path: Union[str, os.PathLike], device: torch.device = CPU,
                 threads: int = 0):
        ov = requires("openvino", "openvino")
        requires("onnx", "onnx")  # the metadata is read with it: fail early, naming the extra
        if device.type != "cpu":
            raise ConfigError("--backend openvino runs on the CPU here (use --device cpu)")
        self.meta = ModelMeta.from_dict(_onnx_metadata(path))
        core = ov.Core()
        # f32 explicitly: OpenVINO picks bf16 on CPUs that report it, which here is emulated (slow) and
        # moved a stand-in's argmax pixels (benchmarks/RESULTS.md, "Inference speed")
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                  "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.path = path

    def _run(self, x: torch.Tensor) -> list[Any]:
        try:
            return list(self.compiled(x.cpu().numpy()).values())
        except Exception as err:  # noqa: BLE001 - OpenVINO raises a bare RuntimeError with its C++ trace
            raise runtime_failure(self.backend, self.path, x.shape, err) from None

    def __call__(self, batch: Batch) -> Any:
        if self.meta.task == "detection":
            return [_detections(self._run(x)) for x in batch]
        assert isinstance(batch, torch.Tensor)
        return torch.from_numpy(np.asarray(self._run(batch)[0]))


def load_model_file(path: Union[str, os.PathLike], backend: str = "", device: torch.device = CPU
                    ) -> Runner:
    """An exported file as a runner: ``.onnx`` with onnxruntime (or ``backend='openvino'``),
    ``.torchscript`` with TorchScript."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--model-file {path}: no such file")
    if path.suffix == FORMATS["torchscript"]:
        if backend not in ("", "torch"):
            raise ConfigError(f"--model-file {path}: a TorchScript file runs with --backend torch, not {backend}")
        return TorchScriptRunner(path, device)
    if path.suffix != FORMATS["onnx"]:
        raise ConfigError(f"--model-file {path}: expected a .onnx or .torchscript file from `seg-transfer export`")
    if backend in ("", "onnxruntime"):
        return OnnxRunner(path, device)
    if backend == "openvino":
        return OpenVinoRunner(path, device)
    raise unknown("backend for an ONNX file", backend, ("onnxruntime", "openvino"), "--backend")


def runner_for(model: nn.Module, backend: str = "torch", fast: bool = False) -> Runner:
    """``model`` on ``backend``: eager (``fast``: the optimised copy), or exported to ONNX on the fly."""
    if backend not in BACKENDS:
        raise unknown("backend", backend, BACKENDS, "--backend")
    if backend == "torch":
        return TorchRunner(model, fast=fast)
    device = next(model.parameters()).device
    with tempfile.TemporaryDirectory(prefix="seg_transfer_export_") as tmp:
        path = export_model(model, Path(tmp) / "model.onnx", "onnx")  # exports a CPU copy
        return load_model_file(path, backend, device)


def file_metadata(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The metadata an exported file carries (for ``seg-transfer export`` to print)."""
    path = Path(path)
    if path.suffix == FORMATS["torchscript"]:
        _, meta = _jit_load(path, CPU)
        return read_metadata({META_KEY: meta} if meta else {}, str(path))
    return _onnx_metadata(path)


def _onnx_metadata(path: Union[str, os.PathLike]) -> dict[str, Any]:
    """The metadata of an ONNX file, checked; a file that is not ONNX is one ConfigError naming it."""
    onnx = requires("onnx", "onnx")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and onnx's own errors alike
        raise ConfigError(f"--model-file {path}: not a readable ONNX file ({_first_line(err)})") from None
    return read_metadata({p.key: p.value for p in proto.metadata_props}, str(path))


__all__ = ["BACKENDS", "ModelMeta", "OnnxRunner", "OpenVinoRunner", "Runner", "TorchRunner", "TorchScriptRunner",
           "as_runner", "check_export", "file_metadata", "load_model_file", "runner_for"]


def check_export(model: nn.Module, path: Union[str, os.PathLike]) -> str:
    """Run an exported file once beside eager PyTorch on a random input; one line saying how they agree."""
    from .export import sample_input

    runner = load_model_file(path)
    model = model.cpu().eval()
    x = sample_input(model).cpu()
    batch = [x] if runner.meta.task == "detection" else x
    eager, got = TorchRunner(model)(batch), runner(batch)
    if runner.meta.task == "detection":
        return f"{len(got[0]['boxes'])} boxes vs {len(eager[0]['boxes'])} eager"
    diff = (got - eager.cpu()).abs().max().item() / max(eager.abs().max().item(), 1e-12)
    if runner.meta.binary:  # one logit channel: its sign is the mask at threshold 0.5
        agree = ((got > 0) == (eager.cpu() > 0)).float().mean().item()
        return f"max difference {diff:.1e} of the largest output, foreground agreement {agree:.4%}"
    agree = (got.argmax(1) == eager.cpu().argmax(1)).float().mean().item()
    return f"max difference {diff:.1e} of the largest output, argmax agreement {agree:.4%}"
