"""Detection inference: parity with torchvision's recipe (``weights.transforms()`` + ``model([img])``) on real
photos through stand-in checkpoints, ``DetectionResult`` outputs, and ``seg-transfer infer`` on detectors.

Stand-ins have random values: agreement proves the pipelines match, never that a detector is accurate.
Random detectors score few boxes above torchvision's internal floor (0.05 for R-CNN), so both sides of
the parity lower it to 0 equally, and the tests assert that boxes were compared.
"""
from __future__ import annotations

import json

import pytest
import torch
import torchvision
from PIL import Image
from torchvision.io import read_image

from seg_transfer import Predictor, create_model
from seg_transfer.cli import main
from seg_transfer.models.checkpoint import save_checkpoint
from seg_transfer.models.detection import class_tensors
from seg_transfer.predict.detection import DetectionResult

from conftest import shared_image

# The recipe decodes with torchvision.io, deprecated in 0.29 in favour of TorchCodec; it is still the recipe.
pytestmark = [pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning"), pytest.mark.usefixtures("one_thread")]

PHOTOS = ["dog1.jpg", "person1.jpg"]
# torchvision's keyword for the score below which a detector drops boxes before NMS, per model.
FLOOR_KWARG = {"fasterrcnn_mobilenet_v3_large_320_fpn": "box_score_thresh", "ssdlite320_mobilenet_v3_large": "score_thresh"}
SSDLITE = "ssdlite320_mobilenet_v3_large"




def lower_floor(model) -> None:
    """Our side of the parity: the same floor of 0 that the reference gets through its keyword."""
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = 0.0
    else:
        model.score_thresh = 0.0


@pytest.fixture(scope="module", params=sorted(FLOOR_KWARG))
def pair(request, standin):
    name = request.param
    standin(name)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    reference = torchvision.models.get_model(name, weights=weights, **{FLOOR_KWARG[name]: 0.0}).eval()
    predictor = Predictor(name)
    lower_floor(predictor.model)
    return name, weights, reference, predictor


@pytest.mark.parametrize("photo", PHOTOS)
def test_predictor_matches_torchvision_recipe(pair, photo):
    name, weights, reference, predictor = pair
    path = shared_image(photo)
    with torch.inference_mode():
        expected = reference([weights.transforms()(read_image(str(path)))])[0]
    result = predictor.predict(path, score_threshold=0.0)
    assert len(expected["boxes"]) > 10 and len(result) == len(expected["boxes"])
    assert torch.allclose(result.boxes, expected["boxes"], atol=1e-4, rtol=0)
    assert torch.equal(result.labels, expected["labels"])
    assert torch.allclose(result.scores, expected["scores"], atol=1e-4, rtol=0)
    assert result.classes == weights.meta["categories"]
    assert result.image.shape[-2:] == read_image(str(path)).shape[-2:]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 'fine-tuned' SSDlite for 3 classes: random, but with spread-out class biases, so that its scores
    differ between classes and anchors (a stand-in's are all 1/num_classes) and thresholds can cut."""
    torch.manual_seed(0)
    model = create_model(SSDLITE, weights=None, backbone_weights=None, classes=["cell", "dot", "ring"])
    modules = dict(model.named_modules())
    with torch.no_grad():
        for t in class_tensors(model):
            modules[t.module].bias.normal_(0, 2)
    return save_checkpoint(tmp_path_factory.mktemp("det") / "best.pt", model)


def test_score_threshold_and_class_filter(checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint)
    path = shared_image("dog1.jpg")
    everything = predictor.predict(path, score_threshold=0.0)
    distinct = everything.scores.unique()  # ascending
    assert len(distinct) > 2
    cut = float(distinct[len(distinct) // 2 - 1:len(distinct) // 2 + 1].mean())  # between two scores
    kept = predictor.predict(path, score_threshold=cut, classes=["dot", "ring"])
    expected = (everything.scores >= cut) & (everything.labels >= 2)
    assert 0 < len(kept) == int(expected.sum()) < len(everything)
    assert torch.equal(kept.boxes, everything.boxes[expected]) and set(kept.label_names) <= {"dot", "ring"}
    assert everything.only(["cell"]).label_names == ["cell"] * everything.label_names.count("cell")
    with pytest.raises(Exception, match="did you mean 'dot'"):
        everything.only(["dott"])
    with pytest.raises(Exception, match="from 0 to 1"):
        predictor.predict(path, score_threshold=1.5)


def test_result_save_draws_boxes_and_masks(tmp_path):
    image = torch.zeros(3, 60, 80, dtype=torch.uint8)
    masks = torch.zeros(2, 60, 80)
    masks[0, 10:30, 10:40] = 0.9
    result = DetectionResult(image=image, boxes=torch.tensor([[10.0, 10.0, 40.0, 30.0], [50.0, 5.0, 75.0, 55.0]]),
                             labels=torch.tensor([1, 2]), scores=torch.tensor([0.9, 0.6]),
                             classes=["__background__", "cell", "dot"], masks=masks, name="x")
    files = result.save(tmp_path, json_report=True)
    assert [f.name for f in files] == ["x_boxes.png", "x.json"]
    drawn = torch.from_numpy(__import__("numpy").array(Image.open(files[0]))).permute(2, 0, 1)
    assert drawn.shape == image.shape and drawn[:, 20, 20].sum() > 0  # mask overlaid inside box 1
    assert drawn[:, 30, 60].sum() == 0  # inside box 2, no mask: untouched
    report = json.loads(files[1].read_text())
    assert [d["label"] for d in report["detections"]] == ["cell", "dot"]
    assert report["detections"][1]["box"] == [50.0, 5.0, 75.0, 55.0]
    assert result.describe().startswith("2 object(s)") and "1 cell" in result.describe()
    only = result.save(tmp_path / "only", classes=["dot"], json_report=True)
    assert [d["label"] for d in json.loads(only[1].read_text())["detections"]] == ["dot"]


# ------------------------------------------------------------------------------------------- CLI
def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def ssdlite(standin):
    standin(SSDLITE)


def detections(path) -> list[dict]:
    return json.loads(path.read_text())["detections"]


def test_infer_zoo_detector_writes_boxes_and_json(ssdlite, tmp_path, capsys):
    img = shared_image("dog1.jpg")
    code, out, err = run(capsys, "infer", "--model", SSDLITE, img, "--out", tmp_path, "--json", "--score-threshold", "0")
    assert code == 0, err
    assert "object(s) scoring >= 0" in out and "dog1_boxes.png, dog1.json" in out
    assert Image.open(tmp_path / "dog1_boxes.png").size == Image.open(img).size
    found = detections(tmp_path / "dog1.json")
    assert found and all(set(d) == {"label", "label_id", "score", "box"} for d in found)


def test_infer_checkpoint_threshold_and_class_filter(checkpoint, tmp_path, capsys):
    """``--checkpoint`` rebuilds the fine-tuned detector from the file alone (classes included);
    ``--score-threshold`` and ``--class`` cut what is drawn and listed."""
    img = shared_image("dog1.jpg")
    code, _, err = run(capsys, "infer", "--checkpoint", checkpoint, img, "--out", tmp_path / "all", "--json",
                       "--score-threshold", "0", "-q")
    assert code == 0, err
    everything = detections(tmp_path / "all" / "dog1.json")
    assert {d["label"] for d in everything} <= {"cell", "dot", "ring"}
    scores = sorted({d["score"] for d in everything})
    cut = (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
    code, out, err = run(capsys, "infer", "--checkpoint", checkpoint, img, "--out", tmp_path / "cut", "--json",
                         "--score-threshold", cut, "--class", "ring", "--class", "cell")
    assert code == 0, err
    kept = detections(tmp_path / "cut" / "dog1.json")
    expected = [d for d in everything if d["score"] >= cut and d["label"] in ("ring", "cell")]
    assert kept == expected and kept
    assert f"{len(kept)} object(s) scoring >= {cut:g}" in out


def test_infer_detector_bad_input_and_unknown_class(ssdlite, tmp_path, capsys):
    good, empty = shared_image("person1.jpg"), tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    code, _, err = run(capsys, "infer", "--model", SSDLITE, empty, good, "--out", tmp_path / "out", "-q")
    assert code == 1 and "empty.jpg" in err
    assert (tmp_path / "out" / "person1_boxes.png").is_file()
    code, _, err = run(capsys, "infer", "--model", SSDLITE, good, "--out", tmp_path / "x", "--class", "dgo")
    assert code == 2 and "did you mean 'dog'" in err and not (tmp_path / "x").exists()
    code, _, err = run(capsys, "infer", "--model", SSDLITE, good, "--out", tmp_path / "x", "--score-threshold", "2")
    assert code == 2 and "from 0 to 1" in err


def test_score_threshold_refused_for_segmentation(tmp_path, capsys):
    code, _, err = run(capsys, "infer", "--model", "lraspp_mobilenet_v3_large", "--weights", "none",
                       "--backbone-weights", "none", shared_image("dog1.jpg"), "--score-threshold", "0.3",
                       "--out", tmp_path)
    assert code == 2 and "--score-threshold applies to detection models" in err


def test_models_lists_detectors(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "detection zoo (torchvision, pretrained end to end):" in out
    assert "  ssdlite320_mobilenet_v3_large" in out
    assert "  ssd        vgg16; none" in out and "  fasterrcnn any; fpn, none" in out


def test_mask_rcnn_masks_at_input_size_and_resized_preprocessing():
    """Mask R-CNN's instance masks come back at the input's size, also when the preprocessing resizes
    first (``infer --checkpoint --resize``): boxes and masks are mapped back to input pixels."""
    import dataclasses

    torch.manual_seed(0)
    model = create_model("maskrcnn_resnet50_fpn", weights=None, backbone_weights=None, num_classes=3, resize=96)
    model.rpn._pre_nms_top_n = model.rpn._post_nms_top_n = {"training": 32, "testing": 32}
    model.roi_heads.score_thresh = 0.0
    predictor = Predictor(model)
    path = shared_image("person1.jpg")
    height, width = read_image(str(path)).shape[-2:]
    plain = predictor.predict(path, score_threshold=0.0)
    assert len(plain) and plain.masks.shape == (len(plain), height, width)
    predictor.preprocess = dataclasses.replace(predictor.preprocess, resize_size=min(height, width) // 2)
    halved = predictor.predict(path, score_threshold=0.0)
    assert len(halved) and halved.masks.shape == (len(halved), height, width)
    assert halved.image.shape[-2:] == (height, width)
    assert float(halved.boxes[:, 2].max()) > width * 0.6 and float(halved.boxes[:, 3].max()) > height * 0.6
