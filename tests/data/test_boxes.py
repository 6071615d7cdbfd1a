"""Box datasets: voc_boxes, coco_boxes and instance_masks read boxes (and masks), allow images without
objects, and report every bad annotation with file and object index before training."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from seg_transfer.data import DataError, build_dataset, check_dataset
from seg_transfer.data.boxes import BACKGROUND
from seg_transfer.errors import ConfigError

from . import save

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

H, W = 40, 60
CLASSES = ["cat", "dog"]


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def xml(objects, size=(W, H)) -> str:
    """VOC XML; ``objects`` are (name, (xmin, ymin, xmax, ymax))."""
    parts = [f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height></size>"]
    for name, box in objects:
        parts.append(f"<object><name>{name}</name><bndbox>" + "".join(
            f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box)) + "</bndbox></object>")
    return "".join(parts) + "</annotation>"


def voc_tree(root: Path, annotations: dict, train=None, val=None) -> Path:
    """JPEGImages/<name>.png + Annotations/<name>.xml (text, or None for no file) + ImageSets/Main lists."""
    for k, (name, text) in enumerate(annotations.items()):
        save(root / "JPEGImages" / f"{name}.png", image(k))
        if text is not None:
            (root / "Annotations").mkdir(parents=True, exist_ok=True)
            (root / "Annotations" / f"{name}.xml").write_text(text)
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    names = list(annotations)
    lists = root / "ImageSets" / "Main"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "train.txt").write_text("\n".join(train if train is not None else names[:-1]) + "\n")
    (lists / "val.txt").write_text("\n".join(val if val is not None else names[-1:]) + "\n")
    return root


def voc(root: Path, **options):
    return build_dataset({"format": "voc_boxes", "root": str(root), "classes": CLASSES, **options})


# ---------------------------------------------------------------------------------------- voc_boxes
def test_voc_boxes_reads_boxes_labels_and_lists(tmp_path):
    root = voc_tree(tmp_path, {"a": xml([("dog", (1, 2, 30, 20)), ("cat", (10, 5, 59, 39))]),
                               "b": xml([("cat", (0, 0, 60, 40))])})
    splits = voc(root)
    assert splits.classes == [BACKGROUND, "cat", "dog"]
    assert (len(splits.train), len(splits.val)) == (1, 1)
    img, target = splits.train[0]
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(target["boxes"], [[1, 2, 30, 20], [10, 5, 59, 39]])
    assert target["boxes"].dtype == np.float32
    assert target["labels"].tolist() == [2, 1] and target["iscrowd"].tolist() == [0, 0]
    assert "masks" not in target and not splits.train.has_masks


def test_voc_boxes_images_without_objects_are_allowed(tmp_path):
    root = voc_tree(tmp_path, {"a": xml([]), "b": None, "c": xml([("dog", (1, 1, 9, 9)), ("cat", (2, 2, 8, 8))])},
                    train=["a", "b"], val=["c"])
    splits = voc(root)
    for i in range(2):
        _, target = splits.train[i]
        assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert check_dataset(splits) == []


def test_voc_boxes_ratio_split_ignores_lists(tmp_path):
    root = voc_tree(tmp_path, {f"n{i}": xml([("cat", (1, 1, 9, 9))]) for i in range(10)})
    splits = voc(root, split="ratio", val_ratio=0.3, seed=1)
    assert (len(splits.train), len(splits.val)) == (7, 3)


BAD = {
    "outside": (xml([("cat", (1, 1, 9, 9)), ("dog", (50, 10, 70, 30))]), "bad_box", "object 1 (dog)", "outside"),
    "zero": (xml([("cat", (5, 5, 5, 20))]), "bad_box", "object 0 (cat)", "zero width"),
    "negative": (xml([("cat", (1, 1, 2, 2)), ("cat", (1, 1, 2, 2)), ("dog", (30, 5, 10, 20))]),
                 "bad_box", "object 2 (dog)", "negative width"),
    "unknown_class": (xml([("horse", (1, 1, 9, 9))]), "unknown_class", "object 0 (horse)", "'horse'"),
    "unparsable": ("<annotation><object><name>cat</name>", "unreadable", "", "not readable VOC XML"),
    "not_a_number": (xml([("cat", ("one", 1, 9, 9))]), "unreadable", "", "bad VOC XML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_data_reports_each_bad_annotation_with_file_and_index(tmp_path, case):
    text, kind, where, words = BAD[case]
    root = voc_tree(tmp_path, {"good": xml([("cat", (1, 1, 9, 9))]), "bad": text}, train=["bad"], val=["good"])
    problems = [p for p in check_dataset({"format": "voc_boxes", "root": str(root), "classes": CLASSES})
                if p.kind != "absent_class"]  # the bad image's classes count as absent: not the point here
    assert [(p.kind, p.severity) for p in problems] == [(kind, "error")]
    assert "bad.xml" in problems[0].message and where in problems[0].message and words in problems[0].message
    with pytest.raises(DataError, match="bad.xml"):
        voc(root).train[0]


def test_bad_boxes_drop_turns_geometry_into_warnings_and_drops_the_box(tmp_path):
    root = voc_tree(tmp_path, {"a": xml([("cat", (1, 1, 9, 9)), ("dog", (5, 5, 5, 5)), ("dog", (50, 1, 61, 9))]),
                               "b": xml([("cat", (1, 1, 9, 9))])})
    problems = check_dataset({"format": "voc_boxes", "root": str(root), "classes": CLASSES, "bad_boxes": "drop"})
    assert [(p.kind, p.severity) for p in problems] == [("bad_box", "warning")] * 2 + [("absent_class", "warning")]
    assert problems[-1].path == "dog"  # both dog boxes are dropped
    _, target = voc(root, bad_boxes="drop").train[0]
    assert target["labels"].tolist() == [1]
    # unknown classes stay errors: a typo in classes must not silently drop a class
    root2 = voc_tree(tmp_path / "2", {"a": xml([("horse", (1, 1, 9, 9))]), "b": xml([])})
    problems = check_dataset({"format": "voc_boxes", "root": str(root2), "classes": CLASSES, "bad_boxes": "drop"})
    assert [(p.kind, p.severity) for p in problems if p.kind != "absent_class"] == [("unknown_class", "error")]


def test_voc_boxes_config_errors(tmp_path):
    root = voc_tree(tmp_path, {"a": xml([]), "b": xml([])})
    with pytest.raises(ConfigError, match="bad_boxes"):
        voc(root, bad_boxes="skip")
    with pytest.raises(ConfigError, match="duplicate"):
        build_dataset({"format": "voc_boxes", "root": str(root), "classes": ["cat", "cat"]})
    with pytest.raises(ConfigError, match="classes"):
        build_dataset({"format": "voc_boxes", "root": str(root), "classes": "cat"})


def test_absent_class_warning_counts_boxes(tmp_path):
    root = voc_tree(tmp_path, {"a": xml([("cat", (1, 1, 9, 9))]), "b": xml([])})
    problems = check_dataset({"format": "voc_boxes", "root": str(root), "classes": CLASSES})
    assert [(p.kind, p.severity, p.path) for p in problems] == [("absent_class", "warning", "dog")]


def test_bccd_reads_and_its_two_degenerate_boxes_are_reported():
    root = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "BCCD_Dataset" / "BCCD"
    if not root.is_dir():
        pytest.skip(f"{root} not available (../shared missing)")
    cfg = {"format": "voc_boxes", "root": str(root), "classes": ["RBC", "WBC", "Platelets"]}
    splits = build_dataset({**cfg, "bad_boxes": "drop"})
    assert (len(splits.train), len(splits.val)) == (205, 87)
    problems = check_dataset(cfg)
    assert sorted(Path(p.path).name for p in problems) == ["BloodImage_00338.xml", "BloodImage_00343.xml"]
    assert all(p.kind == "bad_box" and "zero width" in p.message for p in problems)


# --------------------------------------------------------------------------------------- coco_boxes
def coco_tree(root: Path, annotations, categories=({"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}),
              images=("a.png", "b.png")) -> Path:
    for k, name in enumerate(images):
        save(root / "images" / name, image(k))
    data = {"images": [{"id": k + 1, "file_name": n, "height": H, "width": W} for k, n in enumerate(images)],
            "annotations": annotations, "categories": list(categories)}
    (root / "annotations.json").write_text(json.dumps(data))
    return root


def test_coco_boxes_reads_boxes_masks_and_crowd(tmp_path):
    square = [[10, 10, 30, 10, 30, 20, 10, 20]]  # polygon: x 10..30, y 10..20
    root = coco_tree(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 10], "segmentation": square, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [0, 0, 5, 5], "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]],
         "iscrowd": 1}])
    splits = build_dataset({"format": "coco_boxes", "root": str(root), "masks": True, "split": "all"})
    assert splits.classes == [BACKGROUND, "cat", "dog"]  # category id order: 3 (cat) then 7 (dog)
    assert splits.train.has_masks
    img, target = splits.val[0]
    np.testing.assert_array_equal(target["boxes"], [[10, 10, 30, 20], [0, 0, 5, 5]])
    assert target["labels"].tolist() == [2, 1] and target["iscrowd"].tolist() == [0, 1]
    assert target["masks"].shape == (2, H, W) and target["masks"].dtype == np.uint8
    ys, xs = np.nonzero(target["masks"][0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (10, 29, 10, 19)
    _, empty = splits.val[1]
    assert empty["boxes"].shape == (0, 4) and empty["masks"].shape[0] == 0


def test_coco_boxes_reports_unknown_category_and_bad_box(tmp_path):
    root = coco_tree(tmp_path, [
        {"id": 1, "image_id": 1, "category_id": 99, "bbox": [1, 1, 5, 5]},
        {"id": 2, "image_id": 2, "category_id": 3, "bbox": [50, 30, 20, 20]}])
    problems = check_dataset({"format": "coco_boxes", "root": str(root), "split": "all"})
    by_kind = {p.kind: p.message for p in problems}
    assert set(by_kind) == {"unknown_class", "bad_box"}
    assert "a.png (image id 1" in by_kind["unknown_class"] and "object 0 (category id 99)" in by_kind["unknown_class"]
    assert "b.png (image id 2" in by_kind["bad_box"] and "outside" in by_kind["bad_box"]


# ----------------------------------------------------------------------------------- instance_masks
def instance_tree(root: Path) -> Path:
    ids = np.zeros((H, W), np.uint8)
    ids[5:15, 10:20] = 1
    ids[20:35, 30:50] = 2
    for name, mask in (("p1", ids), ("p2", np.zeros((H, W), np.uint8))):
        save(root / "PNGImages" / f"{name}.png", image())
        save(root / "PedMasks" / f"{name}_mask.png", mask)
    return root


def test_instance_masks_boxes_derived_from_masks(tmp_path):
    root = instance_tree(tmp_path)
    splits = build_dataset({"format": "instance_masks", "root": str(root), "classes": ["pedestrian"],
                            "split": "all"})
    assert splits.classes == [BACKGROUND, "pedestrian"] and splits.train.has_masks
    _, target = splits.val[0]
    np.testing.assert_array_equal(target["boxes"], [[10, 5, 20, 15], [30, 20, 50, 35]])
    assert target["labels"].tolist() == [1, 1]
    assert target["masks"].shape == (2, H, W) and target["masks"].sum((1, 2)).tolist() == [100, 300]
    _, empty = splits.val[1]
    assert empty["boxes"].shape == (0, 4)
    with pytest.raises(ConfigError, match="one object class"):
        build_dataset({"format": "instance_masks", "root": str(root), "classes": ["a", "b"]})


def test_instance_masks_penn_fudan_pair(tmp_path):
    shared = Path(__file__).resolve().parents[2].parent / "shared" / "images"
    if not (shared / "FudanPed00054_mask.png").exists():
        pytest.skip("../shared/images missing")
    (tmp_path / "PNGImages").mkdir()
    (tmp_path / "PedMasks").mkdir()
    (tmp_path / "PNGImages" / "FudanPed00054.png").symlink_to(shared / "FudanPed00054.png")
    (tmp_path / "PedMasks" / "FudanPed00054_mask.png").symlink_to(shared / "FudanPed00054_mask.png")
    splits = build_dataset({"format": "instance_masks", "root": str(tmp_path), "classes": ["pedestrian"],
                            "split": "all"})
    img, target = splits.val[0]
    assert len(target["boxes"]) == 3 and target["masks"].shape[1:] == img.shape[:2]
    for box, mask in zip(target["boxes"], target["masks"]):  # each box is its mask's tight bounds
        ys, xs = np.nonzero(mask)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
