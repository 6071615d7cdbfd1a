"""Binary segmentation predictions: the mask is the foreground where its sigmoid probability reaches the
threshold, whole-image, tiled or with TTA; ``save`` writes the mask as 0/255 and the probability as a
greyscale image; ``infer --threshold`` end to end; the ONNX export of a binary model.

``PixelRunner`` stands in for a model whose foreground probability is the red channel of each pixel
(R / 255), so every expected value is known exactly."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from seg_transfer import create_model
from seg_transfer.cli import main
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import save_checkpoint
from seg_transfer.models.preprocess import Preprocess
from seg_transfer.predict import Predictor, SegmentationResult
from seg_transfer.predict.backends import ModelMeta, Runner
from seg_transfer.predict.segmentation import predict

from conftest import shared_image

IDENTITY = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))  # the runner sees R / 255 itself
CLASSES = ["background", "person"]


class PixelRunner(Runner):
    """Logit of (R / 255) per pixel: the foreground probability is the image's red channel."""

    def __init__(self, binary: bool = True):
        self.meta = ModelMeta("segmentation", CLASSES if binary else ["a", "b", "c"], IDENTITY, binary)

    def __call__(self, batch):
        p = batch[:, :1].clamp(1e-4, 1 - 1e-4)
        return torch.logit(p) if self.meta.binary else torch.cat([p, 1 - p, 0 * p], 1)


@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    """80x100: red rises left to right (0..247, never exactly on 0.3 x 255 or 0.5 x 255), noise in G, B."""
    image = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    image[..., 0] = (np.arange(100) * 2.5).astype(np.uint8)[None, :]
    image[::7, :, 0] = 200  # some rows fully foreground, so the mask is not one step
    return image


def expected_mask(rgb: np.ndarray, threshold: float) -> np.ndarray:
    return (np.clip(rgb[..., 0] / 255.0, 1e-4, 1 - 1e-4) >= threshold).astype(np.int64)


@pytest.mark.parametrize("threshold", [None, 0.3, 0.8])
def test_mask_is_the_probability_at_the_threshold(rgb, threshold):
    result = predict(PixelRunner(), IDENTITY, rgb, threshold=threshold)
    assert result.binary and result.threshold == (threshold or 0.5) and result.classes == CLASSES
    np.testing.assert_array_equal(result.mask.numpy(), expected_mask(rgb, threshold or 0.5))
    assert result.probs.shape == (2, 80, 100)
    np.testing.assert_allclose(result.probs[1].numpy(), rgb[..., 0] / 255.0, atol=1e-4)
    torch.testing.assert_close(result.probs.sum(0), torch.ones(80, 100))
    assert torch.equal(result.class_mask("person"), result.probs[1])


def test_tiled_and_tta_predictions_keep_the_threshold(rgb):
    """Tiling blends [1 - p, p] like any two-class softmax; the mask still thresholds p, not the argmax."""
    tiled = predict(PixelRunner(), IDENTITY, rgb, threshold=0.3, tile=32, overlap=8)
    assert tiled.probs is None and set(tiled.kept) == {1}
    # the blend's float16 frontier: 5e-4 relative; the nearest red value to 0.3 x 255 is 0.5 / 255 away
    np.testing.assert_allclose(tiled.kept[1].numpy(), rgb[..., 0] / 255.0, atol=1e-3)
    np.testing.assert_array_equal(tiled.mask.numpy(), expected_mask(rgb, 0.3))
    flipped = predict(PixelRunner(), IDENTITY, rgb, threshold=0.3, tta=Predictor(PixelRunner(), tta="flip").tta)
    np.testing.assert_array_equal(flipped.mask.numpy(), expected_mask(rgb, 0.3))


def test_save_writes_a_0_255_mask_and_the_probability(rgb, tmp_path):
    result = predict(PixelRunner(), IDENTITY, rgb, threshold=0.3)
    written = result.save(tmp_path, json_report=True, stem="walk")
    assert [p.name for p in written] == ["walk_mask.png", "walk_overlay.png", "walk_prob.png", "walk.json"]
    with Image.open(tmp_path / "walk_mask.png") as img:
        assert img.mode == "L"
        np.testing.assert_array_equal(np.asarray(img), expected_mask(rgb, 0.3) * 255)
    with Image.open(tmp_path / "walk_prob.png") as img:
        assert img.mode == "L"
        assert np.abs(np.asarray(img).astype(int) - rgb[..., 0]).max() <= 1
    report = json.loads((tmp_path / "walk.json").read_text())
    assert report["threshold"] == 0.3
    assert report["fractions"]["person"] == pytest.approx(expected_mask(rgb, 0.3).mean(), abs=1e-6)
    with Image.open(tmp_path / "walk_overlay.png") as img:
        overlay = np.asarray(img.convert("RGB"))
    background = expected_mask(rgb, 0.3) == 0
    background[:24] = False  # the legend's box in the top-left corner
    np.testing.assert_array_equal(overlay[background], rgb[background])  # only the foreground is coloured


def test_a_made_up_binary_result_saves_the_same_way(tmp_path):
    p = torch.tensor([[0.1, 0.6], [0.9, 0.4]])
    result = SegmentationResult(image=torch.zeros(3, 2, 2, dtype=torch.uint8), probs=torch.stack([1 - p, p]),
                                mask=(p >= 0.5).long(), classes=CLASSES, binary=True)
    result.save(tmp_path, stem="x")
    assert np.asarray(Image.open(tmp_path / "x_mask.png")).tolist() == [[0, 255], [255, 0]]
    assert np.asarray(Image.open(tmp_path / "x_prob.png")).tolist() == [[26, 153], [230, 102]]


def test_threshold_needs_a_binary_model(rgb):
    with pytest.raises(ConfigError, match="--threshold applies to binary segmentation models; this one has 3 classes"):
        predict(PixelRunner(binary=False), IDENTITY, rgb, threshold=0.3)
    with pytest.raises(ConfigError, match="--threshold: expected a number from 0 to 1, got 1.5"):
        predict(PixelRunner(), IDENTITY, rgb, threshold=1.5)


# ----------------------------------------------------------------------------- a real binary model
@pytest.fixture(scope="module")
def binary_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(backbone="resnet18", head="fcn", num_classes=1, classes=["background", "person"],
                         backbone_weights=None, resize=64).eval()
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "binary.pt", model), model


def test_infer_threshold_writes_mask_and_probability(binary_checkpoint, tmp_path, capsys):
    path, model = binary_checkpoint
    photo = shared_image("FudanPed00054.png")
    predictor = Predictor(model)
    prob = predictor.predict(photo).class_mask("person")
    threshold = float(prob.median())  # about half the pixels each side, whatever the random weights give
    assert main(["infer", "--checkpoint", str(path), str(photo), "--threshold", str(threshold),
                 "--out", str(tmp_path), "--json", "-q"]) == 0
    with Image.open(tmp_path / "FudanPed00054_mask.png") as img:
        mask = np.asarray(img)
    np.testing.assert_array_equal(mask, (prob >= threshold).numpy().astype(np.uint8) * 255)
    assert 0.3 < (mask == 255).mean() < 0.7
    with Image.open(tmp_path / "FudanPed00054_prob.png") as img:
        assert img.size == (533, 498)
        np.testing.assert_array_equal(np.asarray(img), (prob * 255).round().clamp(0, 255).to(torch.uint8).numpy())
    assert json.loads((tmp_path / "FudanPed00054.json").read_text())["threshold"] == threshold


def test_infer_threshold_on_a_multiclass_model_is_an_error(tmp_path, capsys):
    assert main(["infer", "--model", "lraspp_mobilenet_v3_large", "--weights", "none", "--backbone-weights", "none",
                 str(shared_image("dog1.jpg")), "--threshold", "0.5", "--out", str(tmp_path)]) != 0
    assert "--threshold applies to binary segmentation models, not a 21-class segmentation model" in \
        capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # the ONNX export alone takes about 7 s on 2 cores
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")
def test_onnx_export_of_a_binary_model(binary_checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    from seg_transfer.predict.backends import check_export, file_metadata
    from seg_transfer.predict.export import export_model

    _, model = binary_checkpoint
    path = export_model(model, tmp_path / "binary.onnx", "onnx")
    meta = file_metadata(path)
    assert meta["binary"] is True and meta["classes"] == ["background", "person"]
    assert "foreground agreement 100" in check_export(model, path)
    photo = shared_image("FudanPed00054.png")
    onnx, eager = Predictor.from_file(path), Predictor(model)
    assert onnx.binary and onnx.classes == eager.classes
    got, ref = onnx.predict(photo, threshold=0.4), eager.predict(photo, threshold=0.4)
    assert (got.mask == ref.mask).float().mean() >= 0.999
    assert (got.probs - ref.probs).abs().max() < 1e-4
