"""Exported models (ONNX on onnxruntime and OpenVINO, TorchScript) against eager PyTorch, on real photos,
with stand-in checkpoints (random values: agreement proves the exports match, not that a model is good)."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from torchvision.ops import box_iou

from seg_transfer import create_model
from seg_transfer.errors import ConfigError
from seg_transfer.predict import Predictor
from seg_transfer.predict.backends import file_metadata, load_model_file
from seg_transfer.predict.export import META_KEY, export_model, requires

from conftest import shared_image

MODELS = {"segmentation": "lraspp_mobilenet_v3_large", "classification": "resnet18",
          "detection": "ssdlite320_mobilenet_v3_large"}
PHOTOS = ["dog1.jpg", "FudanPed00054.png"]
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
RUNTIMES = [("onnx", "onnxruntime"), ("torchscript", "torch"),
            pytest.param("onnx", "openvino", marks=pytest.mark.skipif(not HAS_OPENVINO, reason="openvino not installed"))]

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, standin, tmp_path_factory):
    """(task, eager model, {format: exported path}); each model exported once per module."""
    pytest.importorskip("onnxruntime")
    name = MODELS[request.param]
    standin(name)
    model = create_model(name).eval()
    if request.param == "detection":
        # the stand-in SSD scores every anchor the same (0.011), so which boxes survive is a matter of
        # tie order; spread BatchNorm affines and head weights give distinct scores to compare
        torch.manual_seed(0)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, torch.nn.BatchNorm2d):
                    module.weight.normal_(1, 0.3)
                    module.bias.normal_(0, 0.3)
            for p in model.head.classification_head.parameters():
                p.normal_(0, 0.3)
    out = tmp_path_factory.mktemp(name)
    files = {fmt: export_model(model, out / f"{name}.{fmt}", fmt) for fmt in ("onnx", "torchscript")}
    return request.param, model, files


def _matched(ref, got, top: int = 20) -> None:
    """At least 90% of the reference's ``top`` best boxes have a box in ``got`` with IoU > 0.99, the same
    class and score. Not all: the stand-in's scores differ in the fourth digit, and onnxruntime's NMS keeps
    boxes torchvision's drops when their IoU sits on the threshold to float precision, which shifts the
    tail of the ranking."""
    keep = ref.scores.argsort(descending=True)[:top]
    assert len(keep) == top and len(got) >= top
    iou = box_iou(ref.boxes[keep], got.boxes)
    iou[got.labels[None, :] != ref.labels[keep][:, None]] = 0
    best, idx = iou.max(dim=1)
    found = best > 0.99
    assert found.float().mean() >= 0.9, best
    assert torch.allclose(got.scores[idx[found]], ref.scores[keep][found], atol=1e-3)


@pytest.mark.parametrize("fmt,backend", RUNTIMES)
@pytest.mark.parametrize("photo", PHOTOS)
def test_exported_model_matches_eager(exported, fmt, backend, photo):
    task, model, files = exported
    path = shared_image(photo)
    eager = Predictor(model)
    other = Predictor.from_file(files[fmt], backend=backend)
    assert (other.task, other.classes, other.preprocess) == (task, eager.classes, eager.preprocess)
    options = {"score_threshold": 0.0} if task == "detection" else {}
    ref, got = eager.predict(path, **options), other.predict(path, **options)
    if task == "segmentation":
        assert (got.mask == ref.mask).float().mean() >= 0.999
        # stand-in logits run into the hundreds, so a 1e-5 relative difference moves edge probabilities
        assert (got.probs - ref.probs).abs().mean() < 1e-4
    elif task == "classification":
        assert got.label == ref.label
        assert torch.allclose(got.probs, ref.probs, atol=1e-3)
    else:
        _matched(ref, got)


def test_metadata_is_readable_without_seg_transfer(exported):
    """What the README's onnxruntime script reads: one JSON property with task, classes, preprocessing."""
    ort = pytest.importorskip("onnxruntime")
    task, model, files = exported
    props = ort.InferenceSession(str(files["onnx"])).get_modelmeta().custom_metadata_map
    meta = json.loads(props[META_KEY])
    assert meta["task"] == task and meta["classes"] == model.info.classes
    assert meta["preprocess"]["mean"] == list(model.info.preprocess.mean)
    assert file_metadata(files["torchscript"]) == meta


def test_dynamic_batch_and_size(exported):
    task, model, files = exported
    if task == "detection":
        pytest.skip("torchvision's detectors export one image per call")
    runner = load_model_file(files["onnx"])
    x = torch.randn(3, 3, 200, 264)
    with torch.inference_mode():
        eager = model(x)
    eager = eager["out"] if task == "segmentation" else eager
    got = runner(x)
    assert got.shape == eager.shape
    assert ((got - eager).abs().max() / eager.abs().max()) < 1e-3  # float32 summation order


def test_export_leaves_the_model_untouched(standin):
    standin("resnet18")
    model = create_model("resnet18").eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    import io
    buf = io.BytesIO()
    from seg_transfer.predict.export import export_bytes
    buf.write(export_bytes(model, "torchscript"))
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_missing_extra_names_it(monkeypatch):
    import importlib
    real = importlib.import_module

    def fake(name, *args):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[onnx\]"'):
        requires("onnxruntime", "onnx")


def test_bad_model_files(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_model_file(tmp_path / "missing.onnx")
    (tmp_path / "model.bin").write_bytes(b"x")
    with pytest.raises(ConfigError, match=r"expected a \.onnx or \.torchscript"):
        load_model_file(tmp_path / "model.bin")


def test_unknown_format_and_backend(standin):
    standin("resnet18")
    model = create_model("resnet18")
    with pytest.raises(ConfigError, match="export format"):
        export_model(model, "x.tflite", "tflite")
    with pytest.raises(ConfigError, match="backend"):
        Predictor(model, backend="tensorrt")


@pytest.mark.parametrize("backend", ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    not HAS_OPENVINO, reason="openvino not installed"))])
def test_a_runtime_failure_is_one_line_naming_file_and_input(tmp_path, backend):
    """A graph the runtime cannot run on an input (here: a static export fed another size) fails as one
    ConfigError naming the file and the input's size, not the runtime's C++ trace."""
    pytest.importorskip("onnxruntime")
    model = create_model(backbone="resnet18", neck="none", head="lraspp", backbone_weights=None, num_classes=3,
                         resize=64).eval()
    path = export_model(model, tmp_path / "static.onnx", "onnx", dynamic=False)
    runner = load_model_file(path, backend)
    with pytest.raises(ConfigError) as err:
        runner(torch.rand(1, 3, 72, 200))
    message = str(err.value)
    assert message.startswith(f"{path}: {backend} failed on a 1x3x72x200 input: ") and "\n" not in message
