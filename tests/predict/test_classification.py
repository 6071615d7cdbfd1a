"""Classification inference: parity with torchvision's recipe (``weights.transforms()`` +
``model(batch).softmax(1)``) on real photos through stand-in checkpoints, ``ClassificationResult``, and
``seg-transfer infer`` printing and writing the top-k.

Stand-ins have random values: agreement proves the pipelines match, not that a model is accurate.
"""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torchvision.io import read_image

from seg_transfer import Predictor
from seg_transfer.cli import main
from seg_transfer.errors import ConfigError
from seg_transfer.models.build import build_model
from seg_transfer.models.checkpoint import save_checkpoint
from seg_transfer.predict import ClassificationResult

from conftest import shared_image

pytestmark = [pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::FutureWarning")]

PARITY_MODELS = ["resnet18", "mobilenet_v3_large", "inception_v3"]
PHOTOS = ["dog1.jpg", "person1.jpg", "FudanPed00054.png"]
# Inception at 299 px is the slow one on a CPU: one photo for it.
CASES = [(m, p) for m in PARITY_MODELS for p in PHOTOS if m != "inception_v3" or p == "dog1.jpg"]


@pytest.fixture(scope="module")
def threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # shared cores: threads only add contention
    yield
    torch.set_num_threads(n)


PAIRS: dict = {}


def _pair(name):
    """(weights, torchvision's model, our Predictor), from the same stand-in file; built once per model."""
    if name not in PAIRS:
        weights = torchvision.models.get_model_weights(name).DEFAULT
        reference = torchvision.models.get_model(name, weights=weights).eval()
        PAIRS.clear()  # one model at a time in memory
        PAIRS[name] = weights, reference, Predictor(name)
    return PAIRS[name]


@pytest.mark.parametrize("name, photo", CASES)
def test_predictor_matches_torchvision_recipe(name, photo, standin, threads):
    standin(name)
    weights, reference, predictor = _pair(name)
    path = shared_image(photo)
    with torch.inference_mode():
        expected = reference(weights.transforms()(read_image(str(path))).unsqueeze(0)).softmax(1)[0]
    result = predictor.predict(path)
    assert isinstance(result, ClassificationResult)
    assert result.classes == weights.meta["categories"]
    assert torch.allclose(result.probs, expected, atol=1e-5, rtol=0)
    values, indices = expected.topk(5)
    assert result.labels == [weights.meta["categories"][i] for i in indices.tolist()]
    assert [p for _, p in result.top] == pytest.approx(values.tolist(), abs=1e-5)


def test_result_fields_and_json(tmp_path):
    result = ClassificationResult(torch.tensor([0.1, 0.6, 0.3]), ["ant", "bee", "wasp"], name="x", top_k=2)
    assert result.label == "bee" and result.top == [("bee", pytest.approx(0.6)), ("wasp", pytest.approx(0.3))]
    assert result.describe() == "bee 60.0%, wasp 30.0%"
    assert result.save(tmp_path) == []  # the CLI prints the top-k; files only with --json
    (path,) = result.save(tmp_path, classes=["ant"], json_report=True)
    report = json.loads(path.read_text())
    assert report == {"image": "x", "top_k": [{"label": "bee", "prob": 0.6}, {"label": "wasp", "prob": 0.3}],
                      "probs": {"ant": 0.1}}
    with pytest.raises(ConfigError, match="unknown class 'beee'"):
        result.save(tmp_path, classes=["beee"])


def test_infer_cli_prints_top5_and_writes_json(standin, tmp_path, capsys, threads):
    standin("resnet18")
    photo = shared_image("dog2.jpg")
    assert main(["infer", "--model", "resnet18", str(photo), "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    expected = Predictor("resnet18").predict(photo)
    assert line.startswith(f"{photo}: {expected.describe()}") and line.count("%") == 5
    assert main(["infer", "--model", "resnet18", str(photo), "--json", "--top-k", "3", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "dog2.json").read_text())
    assert [e["label"] for e in report["top_k"]] == expected.labels[:3]


def test_infer_checkpoint_gives_fine_tuned_classes(tmp_path, capsys):
    model = build_model(dict(backbone="resnet18", head="classifier", backbone_weights=None,
                             classes=["ant", "bee"], resize=64))
    ckpt = save_checkpoint(tmp_path / "best.pt", model)
    photo = shared_image("dog1.jpg")
    assert main(["infer", "--checkpoint", str(ckpt), str(photo), "--json", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "dog1.json").read_text())
    assert sorted(e["label"] for e in report["top_k"]) == ["ant", "bee"]  # top-5 of two classes: both
    assert sum(e["prob"] for e in report["top_k"]) == pytest.approx(1.0, abs=1e-5)


def test_top_k_refused_for_segmentation(standin, tmp_path, capsys):
    standin("lraspp_mobilenet_v3_large")
    photo = shared_image("dog1.jpg")
    assert main(["infer", "--model", "lraspp_mobilenet_v3_large", str(photo), "--top-k", "3",
                 "--out", str(tmp_path)]) == 2
    assert "--top-k applies to classification models" in capsys.readouterr().err
