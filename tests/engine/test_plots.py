"""Figures: valid PNGs of a sensible size, written atomically, no figure left alive; edge cases
(1 epoch, NaN IoU, CSV strings, ignore pixels, > 20 classes)."""
from __future__ import annotations

import gc
import math
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seg_transfer.engine import plots
from seg_transfer.engine.metrics import ConfusionMatrix
from seg_transfer.errors import ConfigError
from seg_transfer.viz import palette

VOC = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle"]


def check_png(path: Path, min_side: int = 300, max_bytes: int = 3_000_000) -> Image.Image:
    """A decodable PNG, of a plausible size, and alone in its folder (no temporary file left)."""
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert 2_000 < path.stat().st_size < max_bytes
    with Image.open(path) as img:
        img.verify()
    img = Image.open(path)
    assert img.format == "PNG" and min(img.size) >= min_side
    return img


def rows(n: int, **override) -> list[dict]:
    return [{"epoch": e + 1, "train_loss": 1 / (e + 1), "val_loss": 1.2 / (e + 1), "miou": 0.3 + 0.05 * e,
             "pixel_acc": 0.7 + 0.02 * e, "lr": 0.01 * (1 - e / n) ** 0.9 + 1e-6, **override} for e in range(n)]


@pytest.fixture
def leak_check(monkeypatch):
    """Records every Figure the module makes; after the test none may still be alive, nor in pyplot."""
    made: list[weakref.ref] = []

    class Tracked(plots.Figure):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(weakref.ref(self))

    monkeypatch.setattr(plots, "Figure", Tracked)
    yield made
    gc.collect()
    assert made and all(r() is None for r in made), "a figure outlived its plot call"
    import matplotlib.pyplot as plt
    assert plt.get_fignums() == []


def test_curves(tmp_path, leak_check):
    check_png(plots.plot_curves(rows(12), tmp_path / "curves.png"))


@pytest.mark.parametrize("data", [
    rows(1),                                                        # one epoch: single points
    rows(5, miou=math.nan),                                         # no class seen yet: NaN mIoU throughout
    rows(4)[:2] + rows(4, miou=math.nan, val_loss="")[2:],          # gaps
    [{k: str(v) for k, v in r.items()} for r in rows(3)],           # csv.DictReader rows are strings
    [{"epoch": 1, "train_loss": 0.5}],                              # only some columns
    [],                                                             # nothing yet
])
def test_curves_edge_cases(tmp_path, leak_check, data):
    check_png(plots.plot_curves(data, tmp_path / "curves.png"))


def test_curves_replaces_existing_file_atomically(tmp_path):
    out = tmp_path / "curves.png"
    out.write_bytes(b"old")
    plots.plot_curves(rows(3), out)
    check_png(out)


def test_failed_save_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "curves.png"
    out.write_bytes(b"old")

    def boom(self, *a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(plots.Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        plots.plot_curves(rows(3), out)
    assert out.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def samples(n: int = 3, size: int = 48):
    g = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (size, size, 3), generator=g, dtype=torch.uint8).numpy() for _ in range(n)]
    targets = [torch.randint(0, 3, (size, size), generator=g) for _ in range(n)]
    for t in targets:
        t[:4] = 255  # an ignored border
    preds = [torch.randint(0, 4, (size, size), generator=g) for _ in range(n)]
    return images, targets, preds


def test_predictions_grid(tmp_path, leak_check):
    img = check_png(plots.plot_predictions(*samples(3), VOC, tmp_path / "pred.png"))
    w, h = img.size
    assert h > w  # three rows of three panels plus a legend


def test_predictions_accepts_scores_tensors_and_normalised_images(tmp_path, leak_check):
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    images = [(torch.rand(3, 32, 40) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)]
    targets = [np.zeros((32, 40), dtype=np.int64)]
    scores = [torch.randn(len(VOC), 32, 40)]
    check_png(plots.plot_predictions(images, targets, scores, VOC, tmp_path / "p.png", mean=mean, std=std),
              min_side=200)


def test_predictions_limits_samples(tmp_path):
    few = check_png(plots.plot_predictions(*samples(2), VOC, tmp_path / "a" / "p.png"), min_side=200)
    many = check_png(plots.plot_predictions(*samples(9), VOC, tmp_path / "b" / "p.png", max_samples=2),
                     min_side=200)
    assert few.size == many.size


def test_colorize_uses_the_voc_palette_and_a_void_colour_no_class_has():
    mask = np.array([[0, 1, 2], [255, 7, 3]])
    rgb = plots.colorize(mask, num_classes=4, ignore_index=255)
    pal = palette()
    assert (rgb[0, 0] == pal[0]).all() and (rgb[0, 1] == pal[1]).all() and (rgb[1, 2] == pal[3]).all()
    # ignored, and a label outside the classes: VOC's void colour, not black (class 0's colour)
    assert (rgb[1, 0] == pal[255]).all() and (rgb[1, 1] == pal[255]).all()
    assert not any((pal[255] == pal[c]).all() for c in range(255))


@pytest.mark.parametrize("n, length, expected", [(4, 10, [0, 3, 6, 9]), (4, 2, [0, 1]), (1, 5, [0]), (3, 0, [])])
def test_prediction_samples_spread_over_the_split(n, length, expected):
    assert plots.spread(n, length) == expected


def test_confusion(tmp_path, leak_check):
    cm = ConfusionMatrix(len(VOC))
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, len(VOC) - 1, (2, 32, 32), generator=g)  # the last class is never labelled
    pred = torch.where(torch.rand(target.shape, generator=g) < 0.7, target,
                       torch.randint(0, len(VOC), target.shape, generator=g))
    cm.update(pred, target)
    check_png(plots.plot_confusion(cm, VOC, tmp_path / "cm.png"))
    check_png(plots.plot_confusion(cm.mat.numpy(), VOC, tmp_path / "counts" / "cm.png", normalize=None))


def test_confusion_many_classes(tmp_path, leak_check):
    n = 150  # ADE20K
    mat = np.random.default_rng(0).integers(0, 1000, (n, n)) + np.eye(n, dtype=np.int64) * 50_000
    check_png(plots.plot_confusion(mat, [f"class_{i}" for i in range(n)], tmp_path / "cm.png"), min_side=1000)


def test_confusion_annotates_only_small_matrices(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    calls: list[tuple] = []
    original = Axes.text
    monkeypatch.setattr(Axes, "text", lambda self, *a, **k: calls.append(a) or original(self, *a, **k))
    plots.plot_confusion(np.eye(20), [str(i) for i in range(20)], tmp_path / "a.png")
    assert len(calls) == 20 * 20
    calls.clear()
    plots.plot_confusion(np.eye(21), [str(i) for i in range(21)], tmp_path / "b.png")
    assert calls == []


def test_normalize_confusion():
    mat = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 5]])
    rows_ = plots.normalize_confusion(mat, "true")
    assert rows_[0] == pytest.approx([0.75, 0.25, 0]) and np.isnan(rows_[1]).all()
    cols = plots.normalize_confusion(mat, "pred")
    assert cols[:, 0] == pytest.approx([0.75, 0, 0.25]) and np.isnan(cols[:, 1]).sum() == 0
    assert plots.normalize_confusion(mat, "all").sum() == pytest.approx(1)
    assert (plots.normalize_confusion(torch.tensor(mat), None) == mat).all()
    with pytest.raises(ConfigError, match="did you mean 'true'"):
        plots.normalize_confusion(mat, "ture")


def test_confusion_shape_mismatch(tmp_path):
    with pytest.raises(ValueError, match="3 classes"):
        plots.plot_confusion(np.eye(4), ["a", "b", "c"], tmp_path / "cm.png")
    assert not any(tmp_path.iterdir())
