"""Test-time augmentation: the spec parser, output shapes, flip equivariance (segmentation), invariance
(classification), and detections brought back to the image's pixels and merged."""
from __future__ import annotations

import pytest
import torch

from seg_transfer.errors import ConfigError
from seg_transfer.models.tta import TTA, TTAModel, classification_probs, detections, flip_boxes, segmentation_probs


@pytest.mark.parametrize("spec,flip,scales", [("flip", True, (1.0,)), ("scales=0.75,1,1.25", False, (0.75, 1.0, 1.25)),
                                              ("flip,scales=0.5,1", True, (0.5, 1.0)), ("scales=0.5,1,flip", True, (0.5, 1.0))])
def test_parse(spec, flip, scales):
    tta = TTA.parse(spec)
    assert tta == TTA(flip=flip, scales=scales)
    assert len(tta.views()) == len(scales) * (2 if flip else 1)
    assert TTA.parse(str(tta)) == tta


@pytest.mark.parametrize("spec,match", [("flop", "unknown part 'flop'"), ("scales=a", "not a number"),
                                        ("scales=9", "outside")])
def test_parse_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        TTA.parse(spec)


def conv_net(out: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, out, 3, padding=1))


@pytest.mark.parametrize("spec", ["flip", "flip,scales=0.75,1,1.25"])
def test_segmentation_is_flip_equivariant(spec):
    net, tta = conv_net(), TTA.parse(spec)
    x = torch.randn(2, 3, 40, 52)
    with torch.no_grad():
        probs = segmentation_probs(net, x, tta)
        flipped = segmentation_probs(net, x.flip(-1), tta)
    assert probs.shape == (2, 4, 40, 52)
    assert torch.allclose(probs.sum(1), torch.ones(2, 40, 52), atol=1e-5)
    assert torch.allclose(flipped.flip(-1), probs, atol=1e-5)


def test_segmentation_without_views_is_the_softmax():
    net = conv_net()
    x = torch.randn(1, 3, 20, 20)
    with torch.no_grad():
        assert torch.allclose(segmentation_probs(net, x, TTA()), net(x).softmax(1))


def test_classification_is_flip_invariant():
    torch.manual_seed(0)
    net = torch.nn.Sequential(conv_net(6), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = torch.randn(3, 3, 32, 32)
    tta = TTA.parse("flip,scales=0.75,1")
    with torch.no_grad():
        probs = classification_probs(net, x, tta)
        assert probs.shape == (3, 6) and torch.allclose(probs.sum(1), torch.ones(3))
        assert torch.allclose(classification_probs(net, x.flip(-1), tta), probs, atol=1e-5)


def test_tta_model_keeps_the_output_format():
    net = conv_net()

    class Seg(torch.nn.Module):
        def forward(self, x):
            return {"out": net(x)}

    x = torch.randn(1, 3, 24, 24)
    with torch.no_grad():
        out = TTAModel(Seg(), "segmentation", TTA(flip=True)).eval()(x)["out"]
        assert torch.allclose(out.exp().sum(1), torch.ones(1, 24, 24), atol=1e-5)  # log-probabilities
        assert torch.equal(out.argmax(1), segmentation_probs(net, x, TTA(flip=True)).argmax(1))
        assert torch.equal(TTAModel(Seg(), "segmentation", TTA(flip=True)).train()(x)["out"], net(x))  # losses: plain


def test_flip_boxes_is_an_involution():
    boxes = torch.tensor([[10.0, 5.0, 30.0, 25.0], [0.0, 0.0, 100.0, 50.0]])
    flipped = flip_boxes(boxes, 100)
    assert flipped.tolist() == [[70.0, 5.0, 90.0, 25.0], [0.0, 0.0, 100.0, 50.0]]
    assert torch.equal(flip_boxes(flipped, 100), boxes)


def bright(images):
    """A detector of the bright pixels' bounding box (label 1, score 0.9)."""
    out = []
    for img in images:
        ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
        box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        out.append({"boxes": box, "labels": torch.ones(1, dtype=torch.long), "scores": torch.tensor([0.9])})
    return out


@pytest.mark.parametrize("spec", ["flip", "flip,scales=0.5,1,2"])
def test_detection_views_come_back_to_image_pixels_and_merge(spec):
    image = torch.zeros(3, 100, 160)
    image[:, 20:40, 30:70] = 1.0
    (found,) = detections(bright, [image], TTA.parse(spec))
    assert len(found["boxes"]) == 1  # every view found the same object: one box after NMS
    assert torch.allclose(found["boxes"][0], torch.tensor([30.0, 20.0, 70.0, 40.0]), atol=1.0)
