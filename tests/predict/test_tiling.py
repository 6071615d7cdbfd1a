"""Sliding-window inference: tile placement, blending that reproduces whole-image predictions for a model
whose receptive field fits in the overlap, bounded memory, and detection boxes back in image pixels."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from seg_transfer.errors import ConfigError
from seg_transfer.models.preprocess import Preprocess
from seg_transfer.predict import tiling
from seg_transfer.predict.tiling import check_tiling, detect_tiled, segment_tiled, starts

PRE = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def local_net(classes: int = 5) -> torch.nn.Module:
    """Three 3x3 convolutions: a 7-pixel receptive field, so tiles with overlap see all a pixel needs."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, 16, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.Conv2d(16, classes, 3, padding=1)).eval()


def smooth_image(h: int, w: int) -> torch.Tensor:
    torch.manual_seed(1)
    img = torch.rand(1, 3, h, w) * 255
    return F.avg_pool2d(img, 5, 1, 2)[0].to(torch.uint8)


@pytest.mark.parametrize("length,tile,overlap", [(100, 256, 64), (256, 256, 64), (1000, 256, 64), (1001, 300, 100)])
def test_starts_cover_and_overlap(length, tile, overlap):
    s = starts(length, tile, overlap)
    assert s[0] == 0 and s[-1] + min(tile, length) == length
    assert all(b - a <= tile - overlap for a, b in zip(s, s[1:]))  # neighbours overlap by >= overlap


@pytest.mark.parametrize("size,tile,overlap", [((700, 1001), 256, 64), ((300, 900), 128, 32), ((200, 200), 256, 64)])
def test_tiled_matches_whole_image_for_a_local_model(one_thread, size, tile, overlap):
    net = local_net()

    def probs_of(batch):
        return net(batch).softmax(1)

    img = smooth_image(*size)
    with torch.inference_mode():
        whole = probs_of(PRE(img)[None])[0]
        mask, kept = segment_tiled(probs_of, img, PRE, 5, tile=tile, overlap=overlap, keep=[3])
    assert mask.shape == size and mask.dtype == torch.long
    assert (mask == whole.argmax(0)).float().mean() >= 0.999
    assert (kept[3] - whole[3]).abs().max() < 2e-3


def test_bad_tiling_is_one_line():
    with pytest.raises(ConfigError, match="--tile 8"):
        check_tiling(8, 0)
    with pytest.raises(ConfigError, match="--overlap 300"):
        check_tiling(512, 300)


MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys, torch
    from seg_transfer.models.preprocess import Preprocess
    from seg_transfer.predict.tiling import segment_tiled
    torch.set_num_threads(1)
    side = int(sys.argv[1])
    # 21 classes, as VOC: the blend frontier (C x overlap x width) is what could grow. A bare 1x1
    # convolution, with almost no activations of its own, measured 2048: 331 MB, 8192: 399 MB (+20.5%)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 21, 1)).eval()
    img = torch.full((3, side, side), 128, dtype=torch.uint8)
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    base = rss()
    with torch.inference_mode():
        mask, _ = segment_tiled(lambda b: net(b).softmax(1), img, Preprocess((0.5,) * 3, (0.25,) * 3), 21,
                                tile=512, overlap=128)
    print(json.dumps({"extra": rss() - base - mask.numel() * mask.element_size()}))  # the mask is output
""")


@pytest.mark.slow
def test_working_memory_stays_flat_as_the_image_grows():
    """Peak memory beyond the input image and the output mask (which are the image's size by nature):
    a 8192-pixel square needs no more than a 2048-pixel one, within 20%."""
    extra = {}
    for side in (2048, 8192):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(side)], capture_output=True, text=True,
                             check=True)
        extra[side] = json.loads(out.stdout)["extra"]
    assert extra[8192] <= 1.2 * max(extra[2048], 1), extra


def bright_box_detector(images):
    """A stand-in detector: the bounding box of the pixels above 0.5 (label 1, score 1)."""
    out = []
    for img in images:
        ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
        if len(ys):
            box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
            out.append({"boxes": box, "labels": torch.ones(1, dtype=torch.long), "scores": torch.ones(1)})
        else:
            out.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)})
    return out


def test_detection_tiles_return_boxes_in_image_pixels():
    image = torch.zeros(3, 1200, 1500)
    image[:, 100:140, 200:260] = 1.0  # inside the first tile
    image[:, 1000:1030, 1400:1450] = 1.0  # inside the last
    # a per-tile detector finds each object whole, in its tile; merged, both come back in image pixels
    found = detect_tiled(bright_box_detector, image, tile=512, overlap=128, whole=False)
    boxes = sorted(found["boxes"].tolist())
    assert boxes == [[200, 100, 260, 140], [1400, 1000, 1450, 1030]]


def test_predictor_tiles_large_images_with_a_note(one_thread, monkeypatch):
    from seg_transfer.models.build import ModelInfo
    from seg_transfer.predict import Predictor

    class Seg(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = local_net(3)
            self.info = ModelInfo(classes=["a", "b", "c"], preprocess=PRE, task="segmentation")

        def forward(self, x):
            return {"out": self.net(x)}

    monkeypatch.setattr(tiling, "AUTO_TILE_PIXELS", 300 * 300)
    predictor = Predictor(Seg())
    img = smooth_image(400, 500)
    with pytest.warns(UserWarning, match="tiled"):
        result = predictor.predict(img, keep=["b"])
    assert result.probs is None and result.mask.shape == (400, 500)
    assert result.class_mask("b").shape == (400, 500)
    with pytest.raises(ConfigError, match="keeps only"):
        result.class_mask("c")
    whole = predictor.predict(img, tile=0)
    assert whole.probs is not None
    assert (whole.mask == result.mask).float().mean() >= 0.999


# Tiling on every backend, for the zoo and the assembled necks: an exported FPN once failed on tiles whose
# side is not a multiple of 8 ("125 by 126": the exporter took an equality of its example's feature sizes
# for a rule). Random weights: the backends must agree with eager PyTorch, not be accurate.
TILED_MODELS = {
    "zoo_lraspp": dict(name="lraspp_mobilenet_v3_large", weights=None, backbone_weights=None, num_classes=4),
    "fpn": dict(backbone="resnet18", neck="fpn", head="fpn", backbone_weights=None, num_classes=4),
    "aspp": dict(backbone="mobilenet_v2", neck="aspp", head="fcn", backbone_weights=None, num_classes=4),
}
TILED_BACKENDS = ["onnxruntime", pytest.param("openvino", marks=pytest.mark.skipif(
    importlib.util.find_spec("openvino") is None, reason="openvino not installed"))]


@pytest.fixture(scope="module", params=list(TILED_MODELS))
def tiled_model(request):
    from seg_transfer import create_model

    torch.manual_seed(0)
    return create_model(**TILED_MODELS[request.param]).eval()


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning", "ignore::FutureWarning")
@pytest.mark.parametrize("backend", TILED_BACKENDS)
def test_tiling_agrees_across_backends_at_awkward_sizes(one_thread, tiled_model, backend):
    pytest.importorskip("onnxruntime")
    from seg_transfer.predict import Predictor

    eager, other = Predictor(tiled_model), Predictor(tiled_model, backend=backend)
    # sides that are odd, = 1..7 mod 8, smaller than the tile, and a tile whose side is itself awkward
    for (h, w), tile in [((250, 250), 512), ((203, 301), 131), ((161, 97), 100)]:
        img = smooth_image(h, w)
        want = eager.predict(img, tile=tile, overlap=24)
        got = other.predict(img, tile=tile, overlap=24)
        assert got.mask.shape == (h, w)
        assert (got.mask == want.mask).float().mean() >= 0.995, (h, w, tile)
