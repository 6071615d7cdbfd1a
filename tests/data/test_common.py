"""What formats share (``data.common``): pairing by stem, image listing, image and mask reading."""
from __future__ import annotations

import pytest
from PIL import Image
from synthetic.folders import pair, save

from seg_transfer.data import DataError
from seg_transfer.data.common import (
    ORIENTATION,
    dataset_images,
    image_file_shape,
    index_by_stem,
    pair_masks,
    read_mask,
    read_rgb,
    stem,
)


def test_stem_strips_image_extensions_and_folders_only():
    assert stem("/a/b/0001TP_006690.png") == "0001TP_006690"
    assert stem("2007_000032") == "2007_000032"
    assert stem("x.v2.JPG") == "x.v2"


def test_two_files_with_one_stem_are_ambiguous(tmp_path):
    save(tmp_path / "a.png", pair(0)[0])
    save(tmp_path / "a.jpg", pair(0)[0])
    save(tmp_path / ".b.png", pair(0)[0])  # hidden: not listed
    with pytest.raises(DataError, match="share the name 'a'") as info:
        dataset_images(tmp_path)
    assert info.value.problem.kind == "duplicate_name"
    (tmp_path / "a.jpg").unlink()
    assert [p.name for p in dataset_images(tmp_path)] == ["a.png"]
    assert index_by_stem(dataset_images(tmp_path), "a") == {"": tmp_path / "a.png"}
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="images folder .*empty holds no images"):
        dataset_images(tmp_path / "empty")


def test_pair_masks_reports_only_the_used_images_without_a_mask(tmp_path):
    images = [save(tmp_path / "images" / f"{n}.png", pair(0)[0]) for n in ("a", "b", "c")]
    save(tmp_path / "masks" / "a_L.png", pair(0)[1])
    masks, problems = pair_masks(images, tmp_path / "masks", "_L", [0, 1])
    assert masks == [tmp_path / "masks" / "a_L.png", None, None]
    assert [p.path for p in problems] == [str(images[1])]
    assert problems[0].message.startswith(f"image {images[1]}: missing mask {tmp_path / 'masks' / 'b_L'}.png")


def test_image_and_mask_reading_follow_exif_orientation(tmp_path):
    image, mask = pair(0)
    exif = Image.Exif()
    exif[ORIENTATION] = 6  # a quarter turn: H and W swap when read
    Image.fromarray(image).save(tmp_path / "turned.jpg", exif=exif)
    Image.fromarray(mask).save(tmp_path / "turned.png", exif=exif)
    assert image_file_shape(tmp_path / "turned.jpg") == (48, 32) == read_rgb(tmp_path / "turned.jpg").shape[:2]
    assert read_mask(tmp_path / "turned.png").shape == (48, 32)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=f"^image {tmp_path / 'bad.png'}"):
        image_file_shape(tmp_path / "bad.png")
    with pytest.raises(DataError, match=f"^mask {tmp_path / 'bad.png'}"):
        read_mask(tmp_path / "bad.png")


def test_take_keeps_the_chosen_items_of_each_task_dataset(tmp_path):
    """``ImageDataset.take`` (train.limit_train's subset): items ``indices`` only, in that order, each with its
    own label; the dataset it came from is unchanged."""
    import numpy as np
    from synthetic.detection import voc_tree, voc_xml
    from synthetic.folders import CLASSES, make_folder

    from seg_transfer.data import build_dataset

    make_folder(tmp_path / "seg", ["a", "b", "c", "d"])
    voc_tree(tmp_path / "boxes", {n: voc_xml([("cat", (1, 1, 5 + k, 9))]) for k, n in enumerate("abcde")})
    for k, name in enumerate("abcd"):
        save(tmp_path / "cls" / ("ants" if k % 2 else "bees") / f"{name}.png", pair(k)[0])
    datasets = [build_dataset({"format": "folder", "root": str(tmp_path / "seg"), "classes": CLASSES, "split": "all"}),
                build_dataset({"format": "voc_boxes", "root": str(tmp_path / "boxes"), "classes": ["cat"]}),
                build_dataset({"format": "imagefolder", "root": str(tmp_path / "cls"), "split": "all"})]
    for splits in datasets:
        whole = splits.train
        part = whole.take([3, 0])
        assert len(part) == 2 and len(whole) == 4 and type(part) is type(whole)
        assert part.names == [whole.names[3], whole.names[0]]
        for j, i in enumerate([3, 0]):
            (a, label_a), (b, label_b) = part.read(j), whole.read(i)
            assert np.array_equal(a, b)
            if isinstance(label_a, dict):
                assert all(np.array_equal(label_a[k], label_b[k]) for k in label_a)
            else:
                assert np.array_equal(label_a, label_b)
