"""The data check (``data.checks``): check_dataset lists every problem at once; label_frequencies counts pixels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from seg_transfer.data import DataError, build_folder, check_dataset, label_frequencies

from . import CLASSES, FLAT, H, W, folder, make_folder, pair, save


@pytest.fixture
def root(tmp_path):
    make_folder(tmp_path, FLAT)
    return tmp_path


def test_check_dataset_reports_every_problem_at_once(root):
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    save(root / "masks" / "f0.png", rgb)
    (root / "masks" / "f1.png").unlink()
    save(root / "masks" / "f2.png", np.where(pair(2)[1] > 0, 255, 0).astype(np.uint8))
    _, mask = pair(3)
    mask[0, 0] = 9
    save(root / "masks" / "f3.png", mask)
    save(root / "masks" / "f4.png", pair(4, h=24)[1])
    (root / "images" / "f5.png").write_bytes(b"")
    block = {"format": "folder", "root": str(root), "classes": CLASSES[:2], "val_ratio": 0.5}
    problems = check_dataset(block)
    found = {(p.kind, p.path.rsplit("/", 1)[-1]) for p in problems}
    assert found >= {("rgb_mask", "f0.png"), ("missing_mask", "f1.png"), ("binary_mask", "f2.png"),
                     ("label_range", "f3.png"), ("size_mismatch", "f4.png"), ("unreadable", "f5.png")}
    assert all(p.path in p.message for p in problems if p.kind != "absent_class")
    with pytest.raises(DataError, match="missing mask"):  # the builder itself stops at the first
        folder(root)


def test_check_dataset_on_clean_data_finds_nothing_but_can_warn(root):
    assert check_dataset(folder(root)) == []
    problems = check_dataset(build_folder(root, classes=[*CLASSES, "bus"], val_ratio=0.5))
    assert [(p.kind, p.severity, p.message) for p in problems] == [
        ("absent_class", "warning", "class 3 'bus' appears in no mask of train or val")]


def test_check_dataset_reports_a_missing_path_as_a_problem(root):
    problems = check_dataset({"format": "folder", "root": str(root), "masks": "labels", "classes": CLASSES})
    assert [p.kind for p in problems] == ["missing_path"]


def test_label_frequencies_count_pixels_per_class_without_ignore(root):
    _, mask = pair(0)
    mask[:4] = 255
    save(root / "masks" / "f0.png", mask)
    data = folder(root)
    expected = np.zeros(len(CLASSES), np.int64)
    for name in data.train.names:
        raw = np.asarray(Image.open(root / "masks" / f"{name}.png"))
        expected += np.bincount(raw[raw != 255].ravel(), minlength=len(CLASSES))[:len(CLASSES)]
    counts = label_frequencies(data.train)
    assert counts.dtype == np.int64 and counts.tolist() == expected.tolist()
    assert counts.sum() == len(data.train) * H * W - (4 * W if "f0" in data.train.names else 0)


# ------------------------------------------------------------------------------ a long scan: once each, visibly
def test_each_file_is_decoded_once_even_when_train_and_val_share_it(root, monkeypatch):
    from PIL import ImageFile

    loads: list[str] = []
    original = ImageFile.ImageFile.load

    def counting(self):
        if self.tile:  # pixels still to decode (a second load() of a decoded image is free)
            loads.append(str(self.filename))
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    data = build_folder(root, classes=CLASSES, split="all")  # every file in train and in val
    assert check_dataset(data) == []
    files = sorted(str(p) for sub in ("images", "masks") for p in (root / sub).iterdir())
    assert sorted(loads) == files  # each image and mask decoded exactly once


def test_a_slow_check_shows_a_bar_with_count_and_estimate_a_fast_one_stays_quiet(root, monkeypatch, capsys):
    import itertools

    import tqdm.std

    check_dataset(folder(root))
    assert capsys.readouterr().err == ""  # under 2 s: no bar
    clock = itertools.count(0.0, 0.7)  # every tick of tqdm's clock: 0.7 s later
    monkeypatch.setattr(tqdm.std, "time", lambda: next(clock))
    check_dataset(folder(root))
    err = capsys.readouterr().err
    assert "data check:" in err and "6/6" in err and "<" in err  # count, and elapsed<remaining
