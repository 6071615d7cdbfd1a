"""Box datasets (``data.detection``): every bad annotation is reported with file and object index before
training, ``bad_boxes: drop`` turns geometry errors into warnings, and the data check counts boxes per class."""
from __future__ import annotations

import numpy as np
import pytest
from synthetic.detection import TREE_CLASSES as CLASSES
from synthetic.detection import voc, voc_tree, voc_xml

from seg_transfer.data import DataError, check_dataset
from seg_transfer.data.detection import BACKGROUND, RawBoxes, check_boxes, check_classes
from seg_transfer.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


BAD = {
    "outside": (voc_xml([("cat", (1, 1, 9, 9)), ("dog", (50, 10, 70, 30))]), "bad_box", "object 1 (dog)", "outside"),
    "zero": (voc_xml([("cat", (5, 5, 5, 20))]), "bad_box", "object 0 (cat)", "zero width"),
    "negative": (voc_xml([("cat", (1, 1, 2, 2)), ("cat", (1, 1, 2, 2)), ("dog", (30, 5, 10, 20))]),
                 "bad_box", "object 2 (dog)", "negative width"),
    "unknown_class": (voc_xml([("horse", (1, 1, 9, 9))]), "unknown_class", "object 0 (horse)", "'horse'"),
    "unparsable": ("<annotation><object><name>cat</name>", "unreadable", "", "not readable VOC XML"),
    "not_a_number": (voc_xml([("cat", ("one", 1, 9, 9))]), "unreadable", "", "bad VOC XML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_check_data_reports_each_bad_annotation_with_file_and_index(tmp_path, case):
    text, kind, where, words = BAD[case]
    root = voc_tree(tmp_path, {"good": voc_xml([("cat", (1, 1, 9, 9))]), "bad": text}, train=["bad"], val=["good"])
    problems = [p for p in check_dataset({"format": "voc_boxes", "root": str(root), "classes": CLASSES})
                if p.kind != "absent_class"]  # the bad image's classes count as absent: not the point here
    assert [(p.kind, p.severity) for p in problems] == [(kind, "error")]
    assert "bad.xml" in problems[0].message and where in problems[0].message and words in problems[0].message
    with pytest.raises(DataError, match="bad.xml"):
        voc(root).train[0]


def test_bad_boxes_drop_turns_geometry_into_warnings_and_drops_the_box(tmp_path):
    root = voc_tree(tmp_path, {"a": voc_xml([("cat", (1, 1, 9, 9)), ("dog", (5, 5, 5, 5)), ("dog", (50, 1, 61, 9))]),
                               "b": voc_xml([("cat", (1, 1, 9, 9))])})
    problems = check_dataset({"format": "voc_boxes", "root": str(root), "classes": CLASSES, "bad_boxes": "drop"})
    assert [(p.kind, p.severity) for p in problems] == [("bad_box", "warning")] * 2 + [("absent_class", "warning")]
    assert problems[-1].path == "dog"  # both dog boxes are dropped
    _, target = voc(root, bad_boxes="drop").train[0]
    assert target["labels"].tolist() == [1]
    # unknown classes stay errors: a typo in classes must not silently drop a class
    root2 = voc_tree(tmp_path / "2", {"a": voc_xml([("horse", (1, 1, 9, 9))]), "b": voc_xml([])})
    problems = check_dataset({"format": "voc_boxes", "root": str(root2), "classes": CLASSES, "bad_boxes": "drop"})
    # (b, alone in its split, has no box: a split of background only is an error of its own)
    assert [(p.kind, p.severity) for p in problems if p.kind != "absent_class"] == [
        ("unknown_class", "error"), ("too_few_classes", "error")]


def test_absent_class_warning_counts_boxes(tmp_path):
    root = voc_tree(tmp_path, {"c": voc_xml([]), "a": voc_xml([("cat", (1, 1, 9, 9))]), "b": voc_xml([("cat", (2, 2, 9, 9))])})
    problems = check_dataset({"format": "voc_boxes", "root": str(root), "classes": CLASSES})
    assert [(p.kind, p.severity, p.path) for p in problems] == [("absent_class", "warning", "dog")]


def test_check_boxes_keeps_good_boxes_and_names_each_bad_one():
    raw = RawBoxes(np.array([[1, 1, 9, 9], [5, 5, 5, 9], [1, 1, 70, 9]], np.float64), np.array([1, 2, -1]),
                   ["cat", "dog", "horse"], size=(40, 60))
    keep, problems = check_boxes(raw, where="a.xml", image_shape=None, classes=[BACKGROUND, *CLASSES])
    assert keep.tolist() == [True, False, False]
    assert [(p.kind, p.severity) for p in problems] == [("bad_box", "error"), ("unknown_class", "error")]
    assert problems[0].message.startswith("annotation a.xml, object 1 (dog): box [5, 5, 5, 9]")
    keep, problems = check_boxes(RawBoxes.empty((40, 60)), where="b.xml", image_shape=(40, 60), classes=[BACKGROUND])
    assert keep.shape == (0,) and problems == []


def test_check_classes_puts_background_first_once():
    assert check_classes(CLASSES) == [BACKGROUND, *CLASSES]
    assert check_classes([BACKGROUND, *CLASSES]) == [BACKGROUND, *CLASSES]
    with pytest.raises(ConfigError, match="duplicate names cat"):
        check_classes(["cat", "cat"])
