"""Classification data (``data.classification``): the checks an image file must pass, the default
pipelines (weights' resize + centre crop at val), the image transform and the collate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from synthetic.folders import pair, save

from seg_transfer.data.classification import (
    ClassTransform,
    ImageFolderDataset,
    check_image,
    classification_collate,
    default_train_spec,
    default_val_spec,
)
from seg_transfer.data.transforms import build_pipeline
from seg_transfer.errors import ConfigError
from seg_transfer.models.preprocess import Preprocess

IDENTITY = Preprocess(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), resize_size=40, crop_size=32)


def test_check_image_errors_for_unusable_files_and_warns_for_converted_ones(tmp_path):
    good = save(tmp_path / "ok.png", pair(0)[0])
    assert check_image(good, decode=True) == []
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("not a picture\n")
    Image.new("P", (8, 8), 3).save(tmp_path / "placeholder.gif")
    Image.fromarray(pair(0)[0]).convert("CMYK").save(tmp_path / "print jpg.jpg")
    found = {p.name: [(q.kind, q.severity) for q in check_image(p)] for p in sorted(tmp_path.iterdir())}
    assert found == {"empty.jpg": [("unreadable", "error")], "notes.jpg": [("unreadable", "error")],
                     "ok.png": [], "placeholder.gif": [("not_photo", "error")],
                     "print jpg.jpg": [("name_spaces", "warning"), ("converted", "warning")]}


def test_dataset_items_are_raw_images_with_their_labels(tmp_path):
    files = [save(tmp_path / "a" / "x.png", pair(0)[0]), save(tmp_path / "b" / "y.png", pair(1)[0])]
    ds = ImageFolderDataset(files, [0, 1], ["a", "b"], root=tmp_path)
    assert ds.names == ["a/x.png", "b/y.png"] and ds.num_classes == 2 and ds.ignore_index == -100
    image, label = ds[1]
    np.testing.assert_array_equal(image, pair(1)[0])
    assert label == 1 and int(ds.inspect(1)[0]) == 1
    shifted = ds.with_transform(lambda image, label: label + 10)
    assert shifted[0] == 10 and ds.transform is None


def test_default_pipelines_and_transform_give_the_weights_crop():
    assert [s["name"] for s in default_train_spec(32)] == ["RandomResizedCrop", "HorizontalFlip"]
    assert [s["name"] for s in default_train_spec(None)] == ["HorizontalFlip"]
    assert [s["name"] for s in default_val_spec(40, 32)] == ["SmallestMaxSize", "CenterCrop"]
    assert default_val_spec(None, None) == []
    val = ClassTransform(build_pipeline(default_val_spec(40, 32)), IDENTITY)
    x, y = val(pair(0)[0], 1)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64 and int(y) == 1
    train = ClassTransform(build_pipeline(default_train_spec(32)), IDENTITY)
    train.reseed(5)
    first = train(pair(0)[0], 0)[0]
    train.reseed(5)
    assert torch.equal(first, train(pair(0)[0], 0)[0])


def test_collate_stacks_one_size_and_refuses_mixed_sizes():
    a = (torch.zeros(3, 4, 4), torch.tensor(0))
    images, labels = classification_collate([a, a])
    assert images.shape == (2, 3, 4, 4) and labels.tolist() == [0, 0]
    with pytest.raises(ConfigError, match="images of different sizes in one batch"):
        classification_collate([a, (torch.zeros(3, 5, 4), torch.tensor(1))])
