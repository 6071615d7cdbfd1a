"""seg_transfer.predict: Predictor inputs and outputs, SegmentationResult files, checkpoints, devices.

A small LR-ASPP (random weights, 64-pixel input) keeps this fast. Its BatchNorm statistics are
calibrated on a few photos so that masks hold several classes, which makes the mask/probability
checks below meaningful (an uncalibrated random model paints every pixel one class).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch import nn

from seg_transfer import create_model
from seg_transfer.errors import BadInputError, ConfigError
from seg_transfer.io import read_image, resolve_device
from seg_transfer.models.checkpoint import FORMAT, load_checkpoint, save_checkpoint
from seg_transfer.predict import Predictor, SegmentationResult
from seg_transfer.viz import palette

from conftest import shared_image

MODEL = "lraspp_mobilenet_v3_large"
RESIZE = 64

def calibrated_model(seed: int = 0, **kwargs) -> nn.Module:
    """Random LR-ASPP whose BatchNorm statistics come from real photos (varied masks)."""
    torch.manual_seed(seed)
    model = create_model(MODEL, weights=None, backbone_weights=None, resize=RESIZE, **kwargs)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batch
            m.reset_running_stats()
    batch = torch.stack([model.info.preprocess(read_image(shared_image(n)))[..., :RESIZE, :RESIZE]
                         for n in ("dog1.jpg", "dog2.jpg", "astronaut.jpg", "FudanPed00054.png")])
    model.train()
    with torch.no_grad():
        model(batch)
    return model.eval()


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor(calibrated_model(), device="cpu")


@pytest.fixture(scope="module")
def dog(predictor):
    return predictor.predict(shared_image("dog1.jpg"))


@pytest.fixture(scope="module")
def small_rgb() -> np.ndarray:
    """A non-square (H=40, W=60) version of a real photo."""
    with Image.open(shared_image("dog1.jpg")) as img:
        return np.array(img.convert("RGB").resize((60, 40)))


# ------------------------------------------------------------------------------------- predict

def test_result_shapes_and_invariants(predictor, dog):
    path = shared_image("dog1.jpg")
    assert predictor.classes[0] == "__background__" and "dog" in predictor.classes
    assert len(predictor.classes) == 21
    assert dog.name == "dog1"
    assert dog.classes == predictor.classes
    assert torch.equal(dog.image, read_image(path))
    c = len(predictor.classes)
    assert dog.probs.shape == (c, 500, 500) and dog.probs.dtype == torch.float32
    assert dog.mask.shape == (500, 500) and dog.mask.dtype == torch.int64
    assert torch.allclose(dog.probs.sum(0), torch.ones(500, 500), atol=1e-5)
    assert dog.probs.min() >= 0 and dog.probs.max() <= 1
    assert torch.equal(dog.mask, dog.probs.argmax(0))
    assert len(torch.unique(dog.mask)) >= 3  # the calibrated model gives varied masks


def test_every_input_kind_gives_the_same_result(predictor, dog):
    path = shared_image("dog1.jpg")
    with Image.open(path) as img:
        pil = img.convert("RGB")
    arr = np.array(pil)
    tensor = torch.from_numpy(arr).permute(2, 0, 1).contiguous()
    for src in (str(path), pil, arr, tensor, tensor.float() / 255):
        r = predictor.predict(src)
        assert torch.equal(r.mask, dog.mask), type(src)
        assert torch.allclose(r.probs, dog.probs, atol=1e-6)
    assert predictor.predict(arr).name == "image"


def test_non_square_input_size(predictor):
    r = predictor.predict(shared_image("person1.jpg"))  # 480 wide, 640 high
    assert r.mask.shape == (640, 480) and r.probs.shape[-2:] == (640, 480)


def test_resize_to_input_false_gives_model_resolution(predictor, dog):
    r = predictor.predict(shared_image("person1.jpg"), resize_to_input=False)
    # shorter side (width 480) -> 64: 640 * 64 / 480 = 85.3 -> 85
    assert r.mask.shape == (85, 64) and r.probs.shape == (21, 85, 64)
    assert r.image.shape == (3, 85, 64) and r.image.dtype == torch.uint8
    assert torch.equal(r.mask, r.probs.argmax(0))
    assert torch.allclose(r.probs.sum(0), torch.ones(85, 64), atol=1e-5)
    small = predictor.predict(shared_image("dog1.jpg"), resize_to_input=False)
    assert small.mask.shape == (64, 64)
    # Bilinear upsampling of the same probabilities: the big mask's shares match the small one's.
    big, low = dog.fractions(), small.fractions()
    for k in low:
        assert abs(big.get(k, 0) - low[k]) < 0.03


def test_predict_many(predictor, dog):
    results = list(predictor.predict_many([shared_image("dog1.jpg"), shared_image("dog2.jpg")]))
    assert [r.name for r in results] == ["dog1", "dog2"]
    assert torch.equal(results[0].mask, dog.mask)


def test_predictor_from_name():
    p = Predictor(MODEL, weights=None, backbone_weights=None, resize=48)
    assert p.preprocess.resize_size == 48
    assert p.classes == list(create_model(MODEL, weights=None, backbone_weights=None).info.classes)
    assert not p.model.training
    r = p.predict(np.zeros((30, 50, 3), np.uint8))
    assert r.mask.shape == (30, 50)


def test_predictor_refuses_foreign_module():
    with pytest.raises(ConfigError, match="seg_transfer"):
        Predictor(nn.Conv2d(3, 2, 1))


# ----------------------------------------------------------------------------------- classes

def test_class_mask_is_that_class_probability(dog):
    i = dog.classes.index("dog")
    assert dog.class_index("dog") == i
    assert torch.equal(dog.class_mask("dog"), dog.probs[i])
    assert dog.class_mask("dog").shape == (500, 500)


def test_unknown_class_lists_valid_and_suggests(dog):
    with pytest.raises(ConfigError) as info:
        dog.class_mask("dgo")
    msg = str(info.value)
    assert "'dgo'" in msg and "did you mean 'dog'" in msg
    for name in dog.classes:
        assert name in msg
    assert "\n" not in msg


# ------------------------------------------------------------------------- image modes / EXIF

def _write(kind: str, rgb: np.ndarray, tmp_path):
    img = Image.fromarray(rgb)
    path = tmp_path / f"{kind}.png"
    if kind == "grey":
        img.convert("L").save(path)
    elif kind == "rgba":
        Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 128, np.uint8)]), mode="RGBA").save(path)
    elif kind == "palette":
        img.convert("P", palette=Image.Palette.ADAPTIVE, colors=32).save(path)
    elif kind == "16bit":
        Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257).save(path)
    elif kind == "exif":
        path = tmp_path / "exif.jpg"
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees to display
        img.save(path, exif=exif)
    return path


@pytest.mark.parametrize("kind,mode,shape", [
    ("grey", "L", (40, 60)), ("rgba", "RGBA", (40, 60)), ("palette", "P", (40, 60)),
    ("16bit", "I;16", (40, 60)), ("exif", "RGB", (60, 40)),
])
def test_image_modes_give_masks_at_the_displayed_size(predictor, small_rgb, tmp_path, kind, mode, shape):
    path = _write(kind, small_rgb, tmp_path)
    with Image.open(path) as img:
        assert img.mode == mode
        displayed = ImageOps.exif_transpose(img)
        assert displayed.size[::-1] == shape
    r = predictor.predict(path)
    assert r.mask.shape == shape and r.probs.shape[-2:] == shape and r.image.shape == (3, *shape)
    assert torch.equal(r.mask, r.probs.argmax(0))


def test_16bit_image_predicts_like_its_8bit_version(predictor, small_rgb, tmp_path):
    deep = predictor.predict(_write("16bit", small_rgb, tmp_path))
    grey = predictor.predict(_write("grey", small_rgb, tmp_path))
    assert torch.equal(deep.image, grey.image)  # v * 257 * 255/65535 == v exactly
    assert torch.equal(deep.mask, grey.mask)


# -------------------------------------------------------------------------------------- save

def test_save_writes_mask_overlay_class_and_json(dog, tmp_path):
    written = dog.save(tmp_path / "out", classes=["dog"], json_report=True)
    names = [p.name for p in written]
    assert names == ["dog1_mask.png", "dog1_overlay.png", "dog1_dog.png", "dog1.json"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)  # no temp files

    with Image.open(tmp_path / "out" / "dog1_mask.png") as m:
        assert m.mode == "P" and m.size == (500, 500)
        assert np.array_equal(np.asarray(m), dog.mask.numpy())
        assert np.array_equal(np.asarray(m.getpalette(), np.uint8).reshape(-1, 3)[:21], palette()[:21])
    with Image.open(tmp_path / "out" / "dog1_overlay.png") as o:
        assert o.mode == "RGB" and o.size == (500, 500)
    with Image.open(tmp_path / "out" / "dog1_dog.png") as p:
        assert p.mode == "L" and p.size == (500, 500)
        expected = (dog.class_mask("dog") * 255).round().to(torch.uint8).numpy()
        assert np.array_equal(np.asarray(p), expected)
    report = json.loads((tmp_path / "out" / "dog1.json").read_text())
    assert report["image"] == "dog1" and report["height"] == 500 and report["width"] == 500
    assert report["fractions"] == dog.fractions()
    assert abs(sum(report["fractions"].values()) - 1) < 1e-4


def test_save_with_stem_and_odd_class_name(tmp_path):
    classes = ["__background__", "traffic light"]
    mask = torch.tensor([[0, 1], [1, 1]])
    probs = torch.stack([(mask == 0).float(), (mask == 1).float()])
    r = SegmentationResult(image=torch.zeros(3, 2, 2, dtype=torch.uint8), probs=probs, mask=mask,
                           classes=classes, name="x")
    written = r.save(tmp_path, classes=["traffic light"], stem="custom")
    assert [p.name for p in written] == ["custom_mask.png", "custom_overlay.png", "custom_traffic_light.png"]
    with Image.open(written[2]) as p:
        assert np.asarray(p).tolist() == [[0, 255], [255, 255]]


def test_save_unknown_class_writes_nothing(dog, tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'dog'"):
        dog.save(tmp_path / "out", classes=["dgo"])
    assert not (tmp_path / "out").exists()


def test_fractions(dog):
    f = dog.fractions()
    counts = torch.bincount(dog.mask.flatten(), minlength=21)
    assert set(f) == {dog.classes[i] for i in torch.unique(dog.mask).tolist()}
    for name, share in f.items():
        assert share == pytest.approx(counts[dog.classes.index(name)].item() / dog.mask.numel(), abs=1e-6)
    assert sum(f.values()) == pytest.approx(1, abs=1e-4)


def _made_up(mask: torch.Tensor, image: torch.Tensor, n: int = 3) -> SegmentationResult:
    """A result with a chosen mask (one-hot probabilities) over ``n`` classes."""
    classes = ["__background__", "cat", "dog", *[f"class_{i}" for i in range(3, n)]]
    probs = torch.nn.functional.one_hot(mask, n).permute(2, 0, 1).float()
    return SegmentationResult(image=image, probs=probs, mask=mask, classes=classes)


def test_fractions_exact_values():
    mask = torch.zeros(4, 4, dtype=torch.long)
    mask[3] = 2  # one row of four: dog
    r = _made_up(mask, torch.zeros(3, 4, 4, dtype=torch.uint8))
    assert r.fractions() == {"__background__": 0.75, "dog": 0.25}


def test_overlay_background_only_is_the_image(small_rgb):
    image = torch.from_numpy(small_rgb).permute(2, 0, 1).contiguous()
    r = _made_up(torch.zeros(40, 60, dtype=torch.long), image)
    out = r.overlay()
    assert out.mode == "RGB" and out.size == (60, 40)
    assert np.array_equal(np.asarray(out), small_rgb)


def test_overlay_colours_the_class_and_adds_a_legend():
    image = torch.full((3, 200, 200), 100, dtype=torch.uint8)
    mask = torch.zeros(200, 200, dtype=torch.long)
    mask[100:, 100:] = 2  # dog, bottom right
    out = np.asarray(_made_up(mask, image).overlay(alpha=0.5)).astype(int)
    dog_colour = palette()[2].astype(int)
    assert np.abs(out[150, 150] - (100 * 0.5 + dog_colour * 0.5)).max() <= 1
    assert (out[150, 20] == 100).all()  # background, away from the legend: untouched
    assert (out[2, 2] < 100).all()  # legend box darkens the top left corner


def test_mask_image_uses_voc_colours():
    cmap = palette()
    assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
    assert cmap[0].tolist() == [0, 0, 0]
    assert cmap[1].tolist() == [128, 0, 0]
    assert cmap[12].tolist() == [64, 0, 128]  # dog
    assert cmap[15].tolist() == [192, 128, 128]  # person
    mask = torch.tensor([[0, 12], [15, 1]])
    img = _made_up(mask, torch.zeros(3, 2, 2, dtype=torch.uint8), n=21).mask_image()
    assert img.mode == "P" and np.asarray(img).tolist() == mask.tolist()
    rgb = np.asarray(img.convert("RGB"))
    assert rgb.tolist() == [[[0, 0, 0], [64, 0, 128]], [[192, 128, 128], [128, 0, 0]]]


# ------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def custom_model() -> nn.Module:
    """Calibrated, with its own class names (classifier replaced) and its own input size."""
    return calibrated_model(seed=1, classes=["__background__", "cat", "dog"])


def test_save_checkpoint_writes_one_file(custom_model, tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", custom_model, epoch=3)
    assert path == tmp_path / "best.pt"
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_checkpoint_loads_with_weights_only(custom_model, tmp_path):
    path = save_checkpoint(tmp_path / "best.pt", custom_model, epoch=3)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["format"] == FORMAT
    assert ckpt["classes"] == ["__background__", "cat", "dog"]
    assert ckpt["epoch"] == 3
    assert ckpt["model"]["weights"] is None and ckpt["model"]["backbone_weights"] is None


def test_checkpoint_round_trip(custom_model, tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "best.pt", custom_model)
    # Rebuilding needs no download: an empty cache with downloads forbidden.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    monkeypatch.setenv("SEG_TRANSFER_OFFLINE", "1")
    loaded = load_checkpoint(path)
    assert not loaded.training
    assert loaded.info.classes == ["__background__", "cat", "dog"]
    assert loaded.info.preprocess == custom_model.info.preprocess
    assert loaded.info.preprocess.resize_size == RESIZE
    x = custom_model.info.preprocess(read_image(shared_image("dog2.jpg")))[None]
    with torch.no_grad():
        assert torch.equal(loaded(x)["out"], custom_model(x)["out"])
    sd_a, sd_b = custom_model.state_dict(), loaded.state_dict()
    assert sd_a.keys() == sd_b.keys() and all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_predictor_from_checkpoint_needs_no_config(custom_model, tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt" / "best.pt", custom_model)
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)  # no config file anywhere near
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_home"))
    monkeypatch.setenv("SEG_TRANSFER_OFFLINE", "1")
    p = Predictor.from_checkpoint(path)
    r = p.predict(shared_image("dog1.jpg"))
    assert r.classes == ["__background__", "cat", "dog"]
    expected = Predictor(custom_model).predict(shared_image("dog1.jpg"))
    assert torch.equal(r.mask, expected.mask)
    assert torch.allclose(r.probs, expected.probs)
    assert r.class_mask("cat").shape == (500, 500)


def test_bad_checkpoint_files(custom_model, tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint\n")
    plain = tmp_path / "plain.pth"
    torch.save(custom_model.state_dict(), plain)
    good = save_checkpoint(tmp_path / "good.pt", custom_model)
    truncated = tmp_path / "truncated.pt"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    cases = [(text, "cannot read checkpoint"), (plain, "not a seg_transfer checkpoint"),
             (truncated, "cannot read checkpoint"), (tmp_path / "missing.pt", "no such checkpoint")]
    for path, match in cases:
        with pytest.raises(BadInputError, match=match) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        with pytest.raises(BadInputError):
            Predictor.from_checkpoint(path)


# ----------------------------------------------------------------------------------- devices

@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_cuda_without_gpu():
    for spec in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(ConfigError) as info:
            resolve_device(spec)
        msg = str(info.value)
        assert "CUDA is not available" in msg and "--device cpu" in msg and "\n" not in msg
    assert resolve_device(None) == torch.device("cpu")
    with pytest.raises(ConfigError):
        Predictor(nn.Identity(), device="cuda")  # the device is checked first


def test_resolve_device_cpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


def test_resolve_device_bad_name_is_config_error():
    with pytest.raises(ConfigError, match="gpu"):
        resolve_device("gpu")
