"""``seg-transfer convert`` (``data.convert``): any readable dataset written as folder / COCO JSON / imagefolder,
and read back by the toolkit's own formats to the same images and labels."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from synthetic.classification import make_classes
from synthetic.detection import make_instance_masks
from synthetic.tool_files import image, labelme, rect, shape, yolo_line, yolo_tree

from seg_transfer.cli import main
from seg_transfer.data import build_dataset
from seg_transfer.data.convert import convert, source_block
from seg_transfer.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def read_back(out):
    return build_dataset(yaml.safe_load((out / "dataset.yaml").read_text())["data"])


def by_name(ds):
    return {name: ds[i] for i, name in enumerate(ds.names)}


def assert_same_items(source, back, compare):
    for a, b in zip(source, back):
        assert sorted(a.names) == sorted(b.names)
        items = by_name(b)
        for name, (img, label) in by_name(a).items():
            np.testing.assert_array_equal(items[name][0], img)
            compare(label, items[name][1])


def test_segmentation_becomes_the_folder_layout_and_reads_back(tmp_path):
    src = tmp_path / "labelme"
    labelme(src, "a", [rect("cat", 2, 3, 12, 9), shape("dog", [(20, 4), (36, 4), (28, 20)])])
    labelme(src, "b", [rect("dog", 0, 0, 20, 20), rect("__ignore__", 30, 20, 40, 30)], pixels=image(7), embed=True,
            write_image=False)
    labelme(src, "c", [rect("cat", 5, 5, 40, 25)])
    block = {"format": "labelme", "root": str(src), "val_ratio": 0.34, "seed": 0}
    done = convert(block, tmp_path / "out", progress=False)
    out = tmp_path / "out"
    assert (done.layout, done.images, done.train, done.val) == ("folder", 3, 2, 1)
    assert done.data == {"format": "folder", "root": str(out.resolve()), "classes": ["background", "cat", "dog"],
                         "ignore_index": 255, "train_list": "train.txt", "val_list": "val.txt"}
    assert sorted(p.name for p in (out / "images").iterdir()) == ["a.png", "b.png", "c.png"]  # b: its imageData
    mask = Image.open(out / "masks" / "b.png")
    assert mask.mode == "P" and 255 in np.asarray(mask)  # VOC palette; ignored pixels 255
    source = build_dataset(block)
    assert (out / "val.txt").read_text().split() == source.val.names
    assert_same_items(source, read_back(out), np.testing.assert_array_equal)


def test_split_all_is_written_as_split_all(tmp_path):
    labelme(tmp_path / "src", "a", [rect("cat", 2, 3, 12, 9)])
    done = convert({"format": "labelme", "root": str(tmp_path / "src"), "split": "all"}, tmp_path / "out", progress=False)
    assert done.data["split"] == "all" and "train_list" not in done.data and done.images == 1
    back = read_back(tmp_path / "out")
    assert back.train.names == back.val.names == ["a"]


def test_detection_becomes_coco_json_and_reads_back(tmp_path):
    splits = {"train": {"a": [yolo_line(0, (2, 3, 20, 30)), yolo_line(1, (10, 10, 40, 20))], "b": []},
              "val": {"c": [yolo_line(1, (0, 0, 48, 32))]}}
    root = yolo_tree(tmp_path / "yolo", splits)
    done = convert({"format": "yolo", "root": str(root)}, tmp_path / "out", progress=False)
    assert done.layout == "coco_boxes"
    train = json.loads((tmp_path / "out" / "annotations" / "train.json").read_text())
    assert [c["name"] for c in train["categories"]] == ["cat", "dog"] and [c["id"] for c in train["categories"]] == [1, 2]
    assert [i["file_name"] for i in train["images"]] == ["a.png", "b.png"] and len(train["annotations"]) == 2

    def same_target(a, b):
        np.testing.assert_allclose(b["boxes"], a["boxes"], atol=1e-4)
        np.testing.assert_array_equal(b["labels"], a["labels"])
        np.testing.assert_array_equal(b["iscrowd"], a["iscrowd"])

    source, back = build_dataset({"format": "yolo", "root": str(root)}), read_back(tmp_path / "out")
    assert back.classes == source.classes
    assert_same_items(source, back, same_target)


def test_instance_masks_travel_as_rle(tmp_path):
    root = make_instance_masks(tmp_path / "peds", n=4, size=40)
    block = {"format": "instance_masks", "root": str(root), "classes": ["pedestrian"], "val_ratio": 0.25}
    done = convert(block, tmp_path / "out", progress=False)
    assert done.data["masks"] is True

    def same_masks(a, b):
        np.testing.assert_allclose(b["boxes"], a["boxes"], atol=1e-4)
        np.testing.assert_array_equal(b["masks"], a["masks"])

    assert_same_items(build_dataset(block), read_back(tmp_path / "out"), same_masks)


def test_classification_becomes_class_folders_and_reads_back(tmp_path):
    root = make_classes(tmp_path / "classes", n=4, size=16)
    block = {"format": "imagefolder", "root": str(root), "classes": {"vertical": "v", "horizontal": "h"},
             "val_ratio": 0.25}
    done = convert(block, tmp_path / "out", progress=False)
    assert done.layout == "imagefolder" and done.data["classes"] == ["v", "h"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == ["h", "v"]
    source, back = build_dataset(block), read_back(tmp_path / "out")
    for a, b in zip(source, back):
        assert [n.split("/", 1)[1] for n in a.names] == [n.split("/", 1)[1] for n in b.names]
        assert a.labels == b.labels
        np.testing.assert_array_equal(a[0][0], b[0][0])


def test_cli_converts_a_config_or_a_format_and_refuses_a_full_folder(tmp_path, capsys):
    src = tmp_path / "src"
    for k in range(3):
        labelme(src, f"n{k}", [rect("cat", 1, 1, 9, 9)])
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"data": {"format": "labelme", "root": "elsewhere", "val_ratio": 0.34}}))
    assert main(["convert", str(config), f"data.root={src}", "--out", str(tmp_path / "a"), "-q"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"wrote 3 images (2 train, 1 val) to {tmp_path / 'a'}/ in the folder layout")
    assert main(["convert", "labelme", str(src), "split=all", "--out", str(tmp_path / "b"), "-q"]) == 0
    assert yaml.safe_load((tmp_path / "b" / "dataset.yaml").read_text())["data"]["split"] == "all"
    assert main(["convert", "labelme", str(src), "--out", str(tmp_path / "b"), "-q"]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["convert", "labelme", str(src), "--out", str(tmp_path / "b"), "--overwrite", "-q"]) == 0
    assert main(["convert", "lablme", str(src), "--out", str(tmp_path / "c")]) == 2
    assert "unknown format 'lablme' (did you mean 'labelme'?)" in capsys.readouterr().err


def test_source_block_words():
    assert source_block("yolo", ["/data/x", "bad_boxes=drop", "data.val_ratio=0.3"]) == {
        "format": "yolo", "root": "/data/x", "bad_boxes": "drop", "val_ratio": 0.3}
    with pytest.raises(ConfigError, match="key=value"):
        source_block("yolo", ["root=/x", "/y"])
