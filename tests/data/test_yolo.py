"""The yolo format: Ultralytics, Roboflow and labelImg layouts, names from data.yaml or classes.txt, and bad
lines named by file and line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic.folders import save
from synthetic.tool_files import BOX_MODEL, H, W, finetune, image, yolo_line, yolo_tree

from seg_transfer.data import DataError, build_dataset, check_dataset
from seg_transfer.data.detection import BACKGROUND
from seg_transfer.data.yolo import label_path
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SPLITS = {"train": {"a": [yolo_line(0, (2, 3, 20, 30)), yolo_line(1, (10, 10, 40, 20))], "b": []},
          "val": {"c": [yolo_line(1, (0, 0, 48, 32))]}}


def yolo(root, **options):
    return build_dataset({"format": "yolo", "root": str(root), **options})


def test_label_path_follows_ultralytics_rule():
    assert label_path(Path("/d/images/train/x.jpg")) == Path("/d/labels/train/x.txt")
    assert label_path(Path("/d/train/images/x.png")) == Path("/d/train/labels/x.txt")  # Roboflow
    assert label_path(Path("/images/d/images/x.png")) == Path("/images/d/labels/x.txt")  # the last 'images' only
    assert label_path(Path("/d/photos/x.jpeg")) == Path("/d/photos/x.txt")  # labelImg: beside the image


def test_ultralytics_tree_boxes_in_pixels_labels_shifted_past_background(tmp_path):
    data = yolo(yolo_tree(tmp_path, SPLITS))
    assert data.classes == [BACKGROUND, "cat", "dog"]
    assert data.train.names == ["a", "b"] and data.val.names == ["c"]  # data.yaml's train: and val:
    img, target = data.train[0]
    assert img.shape == (H, W, 3)
    np.testing.assert_allclose(target["boxes"], [[2, 3, 20, 30], [10, 10, 40, 20]], atol=1e-3)
    assert target["labels"].tolist() == [1, 2]
    assert data.train[1][1]["boxes"].shape == (0, 4)  # an empty label file: no objects
    assert check_dataset(data) == []


def test_names_as_a_mapping_root_as_the_yaml_and_a_ratio_split(tmp_path):
    root = yolo_tree(tmp_path, SPLITS, names={0: "cat", 1: "dog"})
    data = yolo(root / "data.yaml")
    assert data.classes == [BACKGROUND, "cat", "dog"]
    data = yolo(root, split="ratio", val_ratio=0.34)
    assert (len(data.train), len(data.val)) == (2, 1)
    data = yolo(root, classes=["kitten", "puppy"])  # renamed: the files index the same list
    assert data.classes == [BACKGROUND, "kitten", "puppy"]
    with pytest.raises(ConfigError, match="data.classes has 1 names but the dataset's names list has 2"):
        yolo(root, classes=["cat"])


def test_roboflow_layout_with_parent_paths(tmp_path):
    for split, name in (("train", "a"), ("valid", "b")):
        save(tmp_path / split / "images" / f"{name}.jpg", image(1))
        (tmp_path / split / "labels").mkdir(parents=True)
        (tmp_path / split / "labels" / f"{name}.txt").write_text(yolo_line(0, (4, 4, 12, 12)) + "\n")
    (tmp_path / "data.yaml").write_text("train: ../train/images\nval: ../valid/images\nnc: 1\nnames: ['plate']\n")
    data = yolo(tmp_path)
    assert data.train.names == ["a"] and data.val.names == ["b"] and data.classes == [BACKGROUND, "plate"]
    np.testing.assert_allclose(data.val.read_target(0)["boxes"], [[4, 4, 12, 12]], atol=0.05)  # JPEG: size only


def test_labelimg_folder_with_classes_txt_and_list_files(tmp_path):
    for k in range(4):
        save(tmp_path / f"img{k}.png", image(k))
        (tmp_path / f"img{k}.txt").write_text(yolo_line(k % 2, (1, 1, 9, 9)) + "\n")
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    data = yolo(tmp_path, val_ratio=0.5)
    assert data.classes == [BACKGROUND, "cat", "dog"] and len(data.train) == len(data.val) == 2
    (tmp_path / "val.txt").write_text("img3\n")
    data = yolo(tmp_path, val_list="val.txt")
    assert data.val.names == ["img3"] and data.val.read_target(0)["labels"].tolist() == [2]
    (tmp_path / "classes.txt").unlink()
    with pytest.raises(ConfigError, match="no class names"):
        yolo(tmp_path)


def test_bad_lines_are_named_by_file_and_line(tmp_path):
    splits = {"train": {"a": [yolo_line(0, (2, 3, 20, 30))], "b": []},
              "val": {"c": [yolo_line(1, (0, 0, 48, 32)), "2 0.5 0.5 0.1 0.1", "0 1.5 0.5 0.2 0.2",
                            "0 0.5 0.5", "cat 0.5 0.5 0.1 0.1", "1 0.5 0.5 0 0.2", "1 0.98 0.5 0.2 0.2"]}}
    root = yolo_tree(tmp_path, splits)
    problems = check_dataset({"format": "yolo", "root": str(root)})
    label = root / "labels" / "val" / "c.txt"
    found = [(p.kind, p.message.split(": ", 1)[0]) for p in problems]
    assert found == [("unknown_class", f"label file {label}, line 2"), ("bad_box", f"label file {label}, line 3"),
                     ("unreadable", f"label file {label}, line 4"), ("unreadable", f"label file {label}, line 5"),
                     ("bad_box", f"label file {label}, line 6"), ("bad_box", f"label file {label}, line 7")]
    messages = [p.message for p in problems]
    assert "class 2 is not a class index 0..1 (cat, dog)" in messages[0]
    assert "lie outside [0, 1]: YOLO coordinates are fractions of the image's width and height (48x32)" in messages[1]
    assert "zero width or height" in messages[4] and "reaches outside the image" in messages[5]
    with pytest.raises(DataError, match=r"line 2: class 2 .*\(and 5 more"):
        yolo(root)
    # bad_boxes: drop makes the geometric ones warnings (the rest still stop training)
    kinds = [(p.kind, p.severity) for p in check_dataset({"format": "yolo", "root": str(root), "bad_boxes": "drop"})]
    assert kinds.count(("bad_box", "warning")) == 3 and ("unknown_class", "error") in kinds


def test_polygon_lines_become_their_bounding_box(tmp_path):
    root = yolo_tree(tmp_path, {"train": {"a": ["0 0.1 0.1 0.5 0.2 0.3 0.6"]}, "val": {"b": []}})
    target = yolo(root).train.read_target(0)
    np.testing.assert_allclose(target["boxes"], [[0.1 * W, 0.1 * H, 0.5 * W, 0.6 * H]], atol=1e-4)


def test_missing_paths_name_the_yaml_key(tmp_path):
    root = yolo_tree(tmp_path, SPLITS, yaml_text="train: images/train\nval: images/valid\nnames: [cat, dog]\n")
    with pytest.raises(DataError, match=r"data.yaml: val: images/valid: no such folder or list file"):
        yolo(root)
    with pytest.raises(DataError, match="no such folder"):
        yolo(tmp_path / "nowhere")
    root = yolo_tree(tmp_path / "names_only", SPLITS, yaml_text="names: [cat, dog]\n")
    with pytest.raises(DataError, match=r"data.yaml: has no train: entry .Ultralytics' layout"):
        yolo(root)


def test_indexing_reads_image_headers_only(tmp_path, monkeypatch):
    from PIL import ImageFile

    root = yolo_tree(tmp_path, SPLITS)
    decoded: list[str] = []
    original = ImageFile.ImageFile.load

    def counting(self):
        if self.tile:
            decoded.append(str(self.filename))
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting)
    yolo(root)
    assert decoded == []  # the sizes that normalised coordinates need come from the headers


@pytest.mark.slow
def test_finetune_detector_from_yolo(tmp_path, one_thread):
    splits = {"train": {f"a{k}": [yolo_line(k % 2, (2 + k, 3, 20 + k, 30)), yolo_line(1, (24, 8, 44, 20))] for k in range(4)},
              "val": {f"c{k}": [yolo_line(0, (4, 4, 30, 24))] for k in range(2)}}
    run = finetune(tmp_path, {"format": "yolo", "root": str(yolo_tree(tmp_path / "data", splits))}, BOX_MODEL)
    assert read_checkpoint(run / "best.pt")["classes"] == [BACKGROUND, "cat", "dog"]
