"""The data check (``data.checks``): check_dataset lists every problem at once; label_frequencies counts pixels."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from synthetic.folders import CLASSES, FLAT, H, W, folder, make_folder, pair, save

from seg_transfer.data import DataError, build_folder, check_dataset, label_frequencies
from seg_transfer.data.checks import scan_dataset


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


# ------------------------------------------------------------- splits labelled with too few classes to learn
def test_zero_255_masks_under_a_many_class_config_are_an_error_naming_the_setting(root):
    """255 is the ignore value: a 0/255 mask leaves class 0 as the only label, which trains nothing."""
    for name in FLAT:
        save(root / "masks" / f"{name}.png", np.where(pair(int(name[1:]))[1] > 0, 255, 0).astype(np.uint8))
    scan = scan_dataset(folder(root), progress=False)
    errors = [p for p in scan.problems if p.severity == "error"]
    assert {(p.kind, p.path) for p in errors} == {("too_few_classes", "train"), ("too_few_classes", "val")}
    message = errors[0].message
    assert "only class 0 'background' labelled" in message and "ignore value 255" in message
    assert "model.binary: true" in message and "data.label_map {255: 1}" in message
    # read as a binary model reads them, the same masks are fine
    assert check_dataset(build_folder(root, classes=["background", "car"], val_ratio=0.5), binary=True) == []


def test_a_split_with_nothing_labelled_is_an_error(root):
    for name in FLAT:
        save(root / "masks" / f"{name}.png", np.full((H, W), 255, np.uint8))
    problems = check_dataset(folder(root), progress=False)
    assert {p.kind for p in problems if p.severity == "error"} == {"too_few_classes"}
    assert "no labelled pixels" in problems[-1].message


def test_summary_says_what_each_split_holds(root):
    scan = scan_dataset(folder(root), progress=False)
    assert scan.problems == []
    assert scan.summary() == (f"scanned train: 3 images, {3 * H * W} labelled pixels of 3 classes; "
                              f"val: 3 images, {3 * H * W} labelled pixels of 3 classes")


def test_box_data_without_label_files_is_an_error_worded_for_boxes(tmp_path):
    """A YOLO folder of images whose label files are missing: every image is background."""
    from synthetic.tool_files import image

    for k in range(4):
        save(tmp_path / "images" / f"img{k}.png", image(k))
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    scan = scan_dataset({"format": "yolo", "root": str(tmp_path), "val_ratio": 0.5}, progress=False)
    kinds = {(p.kind, p.severity) for p in scan.problems}
    assert kinds == {("too_few_classes", "error"), ("absent_class", "warning")}
    assert all("mask" not in p.message for p in scan.problems)
    assert any("no boxes: every image is background" in p.message for p in scan.problems)
    assert scan.summary() == "scanned train: 2 images, 0 boxes of 0 classes; val: 2 images, 0 boxes of 0 classes"


def test_box_data_absent_class_is_worded_for_boxes(tmp_path):
    from synthetic.tool_files import image, yolo_line

    for k in range(4):
        save(tmp_path / "images" / f"img{k}.png", image(k))
        (tmp_path / "labels").mkdir(exist_ok=True)
        (tmp_path / "labels" / f"img{k}.txt").write_text(yolo_line(0, (1, 1, 9, 9)) + "\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    problems = check_dataset({"format": "yolo", "root": str(tmp_path), "val_ratio": 0.5}, progress=False)
    assert [(p.kind, p.message) for p in problems] == [("absent_class", "class 2 'dog' appears in no box of train or val")]


def test_a_one_class_classification_split_is_an_error(tmp_path):
    from synthetic.classification import make_classes

    make_classes(tmp_path, n=4)
    problems = check_dataset({"format": "imagefolder", "root": str(tmp_path), "classes": ["horizontal", "vertical"],
                              "val_ratio": 0.5}, progress=False)
    assert problems == []
    import shutil
    shutil.rmtree(tmp_path / "vertical")
    (tmp_path / "vertical").mkdir()
    problems = check_dataset({"format": "imagefolder", "root": str(tmp_path), "classes": ["horizontal", "vertical"],
                              "val_ratio": 0.5}, progress=False)
    errors = [p for p in problems if p.kind == "too_few_classes"]
    assert errors and "all of class 0 'horizontal'" in errors[0].message
