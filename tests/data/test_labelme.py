"""The labelme and labelme_boxes formats: shapes painted as labelme2voc does, boxes, embedded images,
class discovery, clipping, and every broken file named."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from synthetic.tool_files import BOX_MODEL, H, W, finetune, image, labelme, png_b64, rect, shape

from seg_transfer.data import DataError, build_dataset, check_dataset
from seg_transfer.data.detection import BACKGROUND
from seg_transfer.data.labelme import EmbeddedImage
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import read_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def seg(root, **options):
    return build_dataset({"format": "labelme", "root": str(root), "split": "all", **options})


def boxes(root, **options):
    return build_dataset({"format": "labelme_boxes", "root": str(root), "split": "all", **options})


def item(splits, name):
    ds = splits.val
    return ds[ds.names.index(name)]


def test_shapes_are_painted_in_file_order_later_over_earlier(tmp_path):
    triangle = [(20, 4), (36, 4), (28, 20)]
    labelme(tmp_path, "a", [rect("cat", 2, 3, 12, 9), shape("dog", triangle), shape("cat", [(40, 24), (44, 24)], "circle"),
                            rect("dog", 8, 6, 16, 14)])
    data = seg(tmp_path)
    assert data.classes == ["background", "cat", "dog"]  # discovered, sorted, background first
    img, mask = item(data, "a")
    assert img.shape == (H, W, 3) and mask.shape == (H, W) and mask.dtype == np.int64
    expected = Image.new("L", (W, H), 0)
    draw = ImageDraw.Draw(expected)  # labelme's shape_to_mask: outline and fill, circles by radius
    draw.rectangle([2, 3, 12, 9], fill=1, outline=1)
    draw.polygon(triangle, fill=2, outline=2)
    draw.ellipse([36, 20, 44, 28], fill=1, outline=1)
    draw.rectangle([8, 6, 16, 14], fill=2, outline=2)
    np.testing.assert_array_equal(mask, np.asarray(expected))
    assert mask[3, 2] == 1 and mask[7, 10] == 2  # the later dog rectangle covers the cat's corner
    assert mask[24, 40] == 1 and mask[24, 46] == 0 and mask[5, 28] == 2


def test_reversed_rectangle_ignore_background_and_mask_shapes(tmp_path):
    stencil = np.zeros((4, 6), np.uint8)
    stencil[1:3, 2:5] = 255
    labelme(tmp_path, "a", [rect("cat", 20, 20, 4, 2),  # dragged from bottom-right: corners reversed
                            shape("dog", [(16, 10), (21, 13)], "mask", png_b64(stencil)),
                            rect("__ignore__", 0, 28, 10, 31), rect("_background_", 5, 5, 6, 6)])
    _, mask = item(seg(tmp_path, classes=["cat", "dog"]), "a")
    assert mask[2, 4] == 1 and mask[20, 20] == 1 and mask[5, 5] == 0  # the background shape paints 0
    under = np.where(np.arange(16, 22) <= 20, 1, 0)[None, :].repeat(4, axis=0)  # the cat rectangle ends at x 20
    np.testing.assert_array_equal(mask[10:14, 16:22], np.where(stencil > 0, 2, under))  # a mask's 0s leave what is under
    assert (mask[28:32, 0:11] == 255).all()  # __ignore__: the ignore index


def test_given_classes_fix_order_and_background_is_put_first(tmp_path, capsys):
    labelme(tmp_path, "a", [rect("cat", 2, 3, 12, 9), rect("dog", 20, 3, 30, 9)])
    data = seg(tmp_path, classes=["__ignore__", "dog", "cat"])
    assert data.classes == ["background", "dog", "cat"]
    _, mask = item(data, "a")
    assert mask[5, 5] == 2 and mask[5, 25] == 1
    assert "classes found" not in capsys.readouterr().err  # said only when discovered
    seg(tmp_path)
    assert f"labelme: 2 classes found in the 1 files under {tmp_path}: cat, dog" in capsys.readouterr().err


def test_image_path_relative_and_embedded_image_data(tmp_path):
    pixels = image(3)
    labelme(tmp_path / "annotations", "a", [rect("cat", 1, 1, 5, 5)], image_path="..\\images\\a.png",
            write_image=False)  # a Windows-written relative path
    (tmp_path / "images").mkdir()
    Image.fromarray(pixels).save(tmp_path / "images" / "a.png")
    labelme(tmp_path / "annotations", "b", [rect("cat", 1, 1, 5, 5)], pixels=image(4), embed=True, write_image=False)
    data = seg(tmp_path / "annotations")
    np.testing.assert_array_equal(item(data, "a")[0], pixels)
    embedded = data.val.images[data.val.names.index("b")]
    assert isinstance(embedded, EmbeddedImage) and embedded.shape() == (H, W)
    np.testing.assert_array_equal(item(data, "b")[0], image(4))
    assert check_dataset(data) == []


def test_shapes_outside_the_image_are_clipped_with_a_warning(tmp_path, capsys):
    labelme(tmp_path, "a", [rect("cat", -4, 10, 60, 14), shape("dog", [(40, 20), (50, 20)], "circle")])
    problems = check_dataset({"format": "labelme", "root": str(tmp_path), "split": "all"})
    assert [(p.kind, p.severity) for p in problems] == [("clipped", "warning")]
    assert "a.json: shape(s) 0 ('cat'), 1 ('dog') reach outside the 48x32 (WxH) image; clipped" in problems[0].message
    _, mask = item(seg(tmp_path), "a")  # training goes on: clipped shapes are painted inside the image
    assert (mask[10:15, :] != 0).all()
    _, target = item(boxes(tmp_path), "a")
    np.testing.assert_array_equal(target["boxes"], [[0, 10, W, 14], [30, 10, W, 30]])


def test_every_broken_file_is_named_and_the_builder_stops_at_the_first(tmp_path):
    labelme(tmp_path, "good", [rect("cat", 1, 1, 5, 5)])
    (tmp_path / "badjson.json").write_text('{"shapes": [')
    labelme(tmp_path, "twopoints", [shape("cat", [(1, 1), (9, 9)])])
    labelme(tmp_path, "typo", [rect("cta", 1, 1, 5, 5)])
    labelme(tmp_path, "noimage", [rect("cat", 1, 1, 5, 5)], write_image=False)
    block = {"format": "labelme", "root": str(tmp_path), "classes": ["background", "cat"], "split": "all"}
    problems = check_dataset(block)
    found = {(p.kind, p.path.rsplit("/", 1)[-1]) for p in problems}
    assert found == {("unreadable", "badjson.json"), ("bad_shape", "twopoints.json"),
                     ("unknown_class", "typo.json"), ("missing_image", "noimage.json")}
    messages = " | ".join(p.message for p in problems)
    assert "not valid JSON" in messages and "a polygon of 2 point(s) encloses nothing" in messages
    assert "label 'cta' is not one of the classes (background, cat) (did you mean 'cat'?)" in messages
    assert "its image 'noimage.png' is missing" in messages and "imageData" in messages
    with pytest.raises(DataError, match=r"\(and 3 more; the data check"):
        build_dataset(block)


def test_not_labelme_files_and_config_errors(tmp_path):
    with pytest.raises(DataError, match="no LabelMe .json files"):
        seg(tmp_path)
    (tmp_path / "coco.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataError, match="no 'shapes' list, so not a LabelMe file"):
        seg(tmp_path)
    (tmp_path / "coco.json").unlink()
    labelme(tmp_path, "a", [shape("cat", [(1, 1)], "trapezoid")])
    with pytest.raises(DataError, match="shape_type 'trapezoid' is not one LabelMe draws"):
        seg(tmp_path)
    labelme(tmp_path, "a", [rect("cat", 1, 1, 5, 5)])
    with pytest.raises(ConfigError, match="classes: expected a list"):
        seg(tmp_path, classes="cat")


def test_boxes_from_rectangles_polygons_circles_and_masks(tmp_path):
    stencil = np.full((4, 6), 255, np.uint8)
    labelme(tmp_path, "a", [rect("dog", 30, 20, 10, 4), shape("cat", [(2, 3), (8, 1), (5, 9)]),
                            shape("cat", [(40, 10), (43, 14)], "circle"),
                            shape("dog", [(1, 20), (6, 23)], "mask", png_b64(stencil)),
                            shape("cat", [(1, 1), (9, 9)], "line"), rect("__ignore__", 0, 0, 3, 3)])
    data = boxes(tmp_path)
    assert data.classes == [BACKGROUND, "cat", "dog"]
    _, target = item(data, "a")
    np.testing.assert_allclose(target["boxes"], [[10, 4, 30, 20], [2, 1, 8, 9], [35, 5, 45, 15], [1, 20, 7, 24]])
    assert target["labels"].tolist() == [2, 1, 1, 2]
    problems = check_dataset({"format": "labelme_boxes", "root": str(tmp_path), "split": "all"})
    assert [(p.kind, p.severity) for p in problems] == [("bad_shape", "warning")]
    assert "shape(s) 4 ('cat', a line) have no area, so no box; skipped" in problems[0].message


def test_box_classes_and_unknown_labels(tmp_path):
    labelme(tmp_path, "a", [rect("dog", 1, 1, 5, 5), rect("cat", 6, 6, 9, 9)])
    data = boxes(tmp_path, classes=["dog", "cat"])
    assert data.classes == [BACKGROUND, "dog", "cat"] and item(data, "a")[1]["labels"].tolist() == [1, 2]
    with pytest.raises(DataError, match="label 'cat' is not one of the classes \\(dog\\)"):
        boxes(tmp_path, classes=["dog"])


def test_split_options_as_the_folder_format(tmp_path):
    for k in range(10):
        labelme(tmp_path, f"{'ab'[k % 2]}_{k}", [rect("cat", 1, 1, 5, 5)])
    data = build_dataset({"format": "labelme", "root": str(tmp_path), "val_ratio": 0.3, "seed": 1})
    assert (len(data.train), len(data.val)) == (7, 3)
    data = build_dataset({"format": "labelme", "root": str(tmp_path), "group_regex": r"^(\w)_", "val_groups": ["b"]})
    assert sorted(data.val.names) == sorted(f"b_{k}" for k in range(1, 10, 2))
    (tmp_path / "val.txt").write_text("a_0\na_2\n")
    data = build_dataset({"format": "labelme_boxes", "root": str(tmp_path), "val_list": "val.txt"})
    assert sorted(data.val.names) == ["a_0", "a_2"] and len(data.train) == 8


def test_duplicate_names_in_sub_folders_are_refused(tmp_path):
    labelme(tmp_path / "one", "a", [rect("cat", 1, 1, 5, 5)])
    labelme(tmp_path / "two", "a", [rect("cat", 1, 1, 5, 5)])
    with pytest.raises(DataError, match=r"one/a.json and .*two/a.json both name an image 'a'"):
        seg(tmp_path)


# ---------------------------------------------------------------------------------------- fine-tune smoke
def labelme_set(root, n=6):
    rng = np.random.default_rng(0)
    for k in range(n):
        x, y = (int(v) for v in rng.integers(2, 20, 2))
        labelme(root, f"img{k}", [rect("cat", x, y, x + 14, y + 10), shape("dog", [(30, 4), (44, 4), (37, 28)])])
    return root


def test_finetune_from_labelme(tmp_path, one_thread):
    root = labelme_set(tmp_path / "data")
    run = finetune(tmp_path, {"format": "labelme", "root": str(root), "val_ratio": 0.34})
    assert read_checkpoint(run / "best.pt")["classes"] == ["background", "cat", "dog"]


@pytest.mark.slow
def test_finetune_detector_from_labelme(tmp_path, one_thread):
    root = labelme_set(tmp_path / "data")
    run = finetune(tmp_path, {"format": "labelme_boxes", "root": str(root), "val_ratio": 0.34}, BOX_MODEL)
    assert read_checkpoint(run / "best.pt")["classes"] == [BACKGROUND, "cat", "dog"]
