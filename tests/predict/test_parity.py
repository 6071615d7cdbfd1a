"""Parity with torchvision's own recipe (``weights.transforms()`` + ``model(batch)["out"].softmax(1)``) on
real photos, both sides loading the same stand-in checkpoint through ``Weights.DEFAULT``.

Stand-ins have random values: agreement here proves the pipelines match, not that a model is accurate.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torchvision.io import read_image

from seg_transfer import Predictor
from seg_transfer.cli import main

from conftest import shared_image

# The recipe decodes with torchvision.io, deprecated in 0.29 in favour of TorchCodec; it is still the recipe.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

PARITY_MODELS = ["fcn_resnet50", "lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"]
PHOTOS = ["dog1.jpg", "person1.jpg"]


@pytest.fixture(scope="module", params=PARITY_MODELS)
def pair(request, standin):
    """(model name, torchvision's model, our Predictor), from the same stand-in file."""
    name = request.param
    standin(name)
    weights = torchvision.models.get_model_weights(name).DEFAULT
    reference = torchvision.models.get_model(name, weights=weights).eval()
    return name, weights, reference, Predictor(name)


def _recipe(weights, reference, path) -> torch.Tensor:
    batch = weights.transforms()(read_image(str(path))).unsqueeze(0)
    with torch.inference_mode():
        return reference(batch)["out"].softmax(dim=1)


@pytest.mark.parametrize("photo", PHOTOS)
def test_predictor_matches_torchvision_recipe(pair, photo):
    name, weights, reference, predictor = pair
    path = shared_image(photo)
    expected = _recipe(weights, reference, path)[0]
    result = predictor.predict(path, resize_to_input=False)
    assert result.probs.shape == expected.shape
    assert torch.allclose(result.probs, expected, atol=1e-5, rtol=0)
    assert torch.equal(result.mask, expected.argmax(0))
    assert result.classes == weights.meta["categories"]


@pytest.mark.parametrize("photo", PHOTOS)
def test_infer_outputs_are_recipe_resized_to_input(pair, photo, tmp_path):
    """The mask PNG is the argmax of the recipe's probabilities resized bilinearly to the input size."""
    name, weights, reference, _ = pair
    path = shared_image(photo)
    probs = _recipe(weights, reference, path)
    height, width = Image.open(path).size[::-1]
    resized = F.interpolate(probs, size=(height, width), mode="bilinear", align_corners=False)[0]
    assert main(["infer", "--model", name, str(path), "--class", "dog", "--out", str(tmp_path), "-q"]) == 0
    stem = path.stem
    mask = np.asarray(Image.open(tmp_path / f"{stem}_mask.png"))
    assert mask.shape == (height, width)
    assert np.array_equal(mask, resized.argmax(0).numpy())
    dog = np.asarray(Image.open(tmp_path / f"{stem}_dog.png")).astype(np.int16)
    expected_dog = (resized[weights.meta["categories"].index("dog")] * 255).round().numpy().astype(np.int16)
    assert np.abs(dog - expected_dog).max() <= 1
    assert Image.open(tmp_path / f"{stem}_overlay.png").size == (width, height)
