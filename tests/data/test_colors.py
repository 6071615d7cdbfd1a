"""Colour masks (``data.colors``): the vectorised colour -> index lookup, the VOC colormap recognised by itself,
``colors:`` as a list, a mapping or a labelmap.txt, and every unknown colour named with its pixel count."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image
from synthetic.folders import CLASSES, FLAT, H, W, make_folder, pair, save
from synthetic.tool_files import finetune

from seg_transfer.data import DataError, build_folder, check_dataset
from seg_transfer.data.colors import VOC, Palette, pack, parse_colors, read_labelmap, unpack
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import read_checkpoint
from seg_transfer.viz import palette

COLOURS = [(10, 20, 30), (200, 10, 10), (10, 200, 10)]  # a palette of one's own: none of these is VOC's


@pytest.fixture
def root(tmp_path):
    make_folder(tmp_path, FLAT)
    return tmp_path


def paint(root, colours, names=FLAT):
    """Rewrite the masks of ``names`` as RGB in ``colours`` (class k -> colours[k]); returns their indices."""
    table = np.array(colours, np.uint8)
    indices = {}
    for k, name in enumerate(FLAT):
        _, mask = pair(k)
        indices[name] = mask
        if name in names:
            save(root / "masks" / f"{name}.png", table[mask])
    return indices


def test_lookup_maps_every_colour_and_counts_the_unknown_ones():
    pal = Palette(COLOURS, [0, 1, 2], "test")
    mask = np.random.default_rng(0).integers(0, 3, (40, 50))
    rgb = np.array(COLOURS, np.uint8)[mask]
    indices, unknown, counts = pal.lookup(rgb)
    np.testing.assert_array_equal(indices, mask)
    assert unknown.shape == (0, 3)
    rgb[:3, :2] = (1, 2, 3)
    rgb[5, 5] = (255, 255, 255)
    indices, unknown, counts = pal.lookup(rgb)
    assert indices is None and unknown.tolist() == [[1, 2, 3], [255, 255, 255]] and counts.tolist() == [6, 1]
    np.testing.assert_array_equal(unpack(pack(rgb)), rgb.reshape(-1, 3).reshape(rgb.shape))


def test_lookup_is_vectorised_fast_enough_for_photos():
    """A 550x850 mask (the size of the photos of the issue) converts in well under a tenth of a second."""
    mask = np.random.default_rng(0).integers(0, 21, (550, 850))
    rgb = palette(256)[mask]
    VOC.lookup(rgb)  # warm-up
    start = time.perf_counter()
    indices, _, _ = VOC.lookup(rgb)
    assert time.perf_counter() - start < 0.5  # ~20 ms here; generous for a busy machine
    np.testing.assert_array_equal(indices, mask)


def test_rgb_masks_in_the_voc_colormap_are_read_as_indices_with_one_line(root, capsys):
    indices = paint(root, palette(256)[:3])
    data = build_folder(root, classes=CLASSES, split="all")
    for i, name in enumerate(data.val.names):
        np.testing.assert_array_equal(data.val.read_mask(i), indices[name])
    assert check_dataset(data) == []
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"masks in {root / 'masks'} are RGB colours of the VOC colormap" in err


def test_voc_colours_beyond_the_classes_stay_an_rgb_mask_error(root):
    # CamVid's road (128, 64, 128) is VOC's colour 21: a CamVid colour mask is not a VOC one
    save(root / "masks" / "f0.png", np.full((H, W, 3), (128, 64, 128), np.uint8))
    problems = check_dataset(build_folder(root, classes=CLASSES, split="all"))
    assert [p.kind for p in problems] == ["rgb_mask"]
    assert "colours found: (128, 64, 128)" in problems[0].message and "indices 21 beyond the 3 classes" in problems[0].message
    assert "data.colors" in problems[0].message


def test_colors_list_names_any_palette_and_unknown_colours_are_named(root):
    indices = paint(root, COLOURS)
    data = build_folder(root, classes=CLASSES, split="all", colors=[list(c) for c in COLOURS])
    for i, name in enumerate(data.val.names):
        np.testing.assert_array_equal(data.val.read_mask(i), indices[name])
    rgb = np.array(COLOURS, np.uint8)[indices["f2"]]
    rgb[:2, :5] = (7, 7, 7)  # anti-aliased pixels of a paint program
    rgb[10, 10] = (9, 9, 9)
    save(root / "masks" / "f2.png", rgb)
    problems = check_dataset({"format": "folder", "root": str(root), "classes": CLASSES, "split": "all",
                              "colors": [list(c) for c in COLOURS]})
    assert [(p.kind, p.path) for p in problems] == [("unknown_colour", str(root / "masks" / "f2.png"))]
    assert problems[0].message.startswith(f"mask {root / 'masks' / 'f2.png'}: colour (7, 7, 7) (10 pixels) is not "
                                          "in data.colors; also (9, 9, 9) (1 pixels)")
    with pytest.raises(DataError, match=r"colour \(7, 7, 7\) \(10 pixels\)"):
        data.val[data.val.names.index("f2")]


def test_colors_mapping_gives_a_void_colour_the_ignore_index(root):
    indices = paint(root, COLOURS)
    rgb = np.array(COLOURS, np.uint8)[indices["f1"]]
    rgb[0] = (255, 255, 255)
    save(root / "masks" / "f1.png", rgb)
    colors = {0: list(COLOURS[0]), 1: list(COLOURS[1]), 2: list(COLOURS[2]), 255: [255, 255, 255]}
    data = build_folder(root, classes=CLASSES, split="all", colors=colors)
    mask = data.val.read_mask(data.val.names.index("f1"))
    assert (mask[0] == 255).all() and np.array_equal(mask[1:], indices["f1"][1:])


def test_colors_from_a_labelmap_also_name_the_classes(root):
    paint(root, COLOURS)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "".join(
        f"{name}:{','.join(map(str, c))}::\n" for name, c in zip(["background", "lane", "truck"], COLOURS)))
    data = build_folder(root, split="all", colors="labelmap.txt")
    assert data.classes == ["background", "lane", "truck"]
    assert check_dataset(data) == []
    with pytest.raises(ConfigError, match="data.classes has 2 names but labelmap"):
        build_folder(root, classes=CLASSES[:2], split="all", colors="labelmap.txt")


def test_grey_masks_still_read_as_indices_and_plain_rgb_is_still_explained(root):
    _, mask = pair(2)
    save(root / "masks" / "f2.png", np.repeat(mask[..., None], 3, axis=2))
    save(root / "masks" / "f3.png", np.full((H, W, 3), (1, 2, 3), np.uint8))
    problems = check_dataset(build_folder(root, classes=CLASSES, split="all"))
    assert [(p.kind, p.path.rsplit("/", 1)[-1]) for p in problems] == [("rgb_mask", "f3.png")]
    assert "(3 channels): save class indices as a single-channel PNG" in problems[0].message


def test_bad_colors_options(tmp_path):
    with pytest.raises(ConfigError, match=r"data.colors\[1\]: expected an RGB triple"):
        parse_colors([[0, 0, 0], [300, 0, 0]])
    with pytest.raises(ConfigError, match=r"entries 0 and 2 share the colour \(1, 2, 3\)"):
        parse_colors([[1, 2, 3], [4, 5, 6], [1, 2, 3]])
    with pytest.raises(ConfigError, match="data.colors: expected a list"):
        parse_colors(7)
    (tmp_path / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50::\n")
    with pytest.raises(DataError, match=r"labelmap .*labelmap.txt, line 3: 'car:250,50::' is not 'name:r,g,b::'"):
        read_labelmap(tmp_path / "labelmap.txt")
    with pytest.raises(DataError, match="no such file"):
        parse_colors("nope.txt", tmp_path)


def test_finetune_from_voc_coloured_rgb_masks(tmp_path, one_thread):
    make_folder(tmp_path / "data", [f"n{k}" for k in range(6)])
    for path in (tmp_path / "data" / "masks").iterdir():
        save(path, palette(256)[np.asarray(Image.open(path))])  # as published: RGB in VOC's colours
    run = finetune(tmp_path, {"format": "folder", "root": str(tmp_path / "data"), "classes": CLASSES, "val_ratio": 0.34})
    assert read_checkpoint(run / "best.pt")["classes"] == CLASSES
