"""The imagefolder format: classes from folders or config, splits, and every messy-file case."""
from __future__ import annotations

import pytest
from synthetic.classification import CLASSES, add_messy_files, make_classes

from seg_transfer.cli import main
from seg_transfer.data.checks import DataError, check_dataset
from seg_transfer.data.registry import build_dataset
from seg_transfer.errors import ConfigError


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return make_classes(tmp_path_factory.mktemp("classes"), n=10, size=24)


@pytest.fixture
def messy(tmp_path):
    root = make_classes(tmp_path / "data", n=6, size=24)
    return root, add_messy_files(root)


def _data(root, **options):
    return {"format": "imagefolder", "root": str(root), **options}


def test_classes_from_folders_and_stratified_split(clean):
    splits = build_dataset(_data(clean, val_ratio=0.2, seed=3))
    assert splits.classes == sorted(CLASSES)  # torchvision's ImageFolder order
    assert (len(splits.train), len(splits.val)) == (16, 4)
    assert sorted(splits.val.labels) == [0, 0, 1, 1]  # 20% of each class
    assert not set(splits.train.names) & set(splits.val.names)
    image, label = splits.train[0]
    assert image.shape == (24, 24, 3) and image.dtype.name == "uint8" and label == 0
    again = build_dataset(_data(clean, val_ratio=0.2, seed=3))
    assert again.val.names == splits.val.names  # the seed fixes the split
    assert build_dataset(_data(clean, val_ratio=0.2, seed=4)).val.names != splits.val.names


def test_classes_from_config_list_and_mapping(clean):
    splits = build_dataset(_data(clean, classes=["horizontal", "vertical"]))
    assert splits.classes == ["horizontal", "vertical"]
    assert {n.split("/")[0] for n, y in zip(splits.train.names, splits.train.labels) if y == 0} == {"horizontal"}
    renamed = build_dataset(_data(clean, classes={"vertical": "tall", "horizontal": "wide"}))
    assert renamed.classes == ["tall", "wide"]
    with pytest.raises(DataError, match="class folder .*horizontl: no such folder .*did you mean 'horizontal'"):
        build_dataset(_data(clean, classes=["horizontl", "vertical"]))
    with pytest.raises(ConfigError, match="at least two class folders"):
        build_dataset(_data(clean, classes=["vertical"]))


def test_split_by_list_files(clean, tmp_path):
    (clean / "val.txt").write_text("vertical/vertical_000.png\nhorizontal/horizontal_001\n")
    splits = build_dataset(_data(clean, val_list="val.txt"))
    assert sorted(splits.val.names) == ["horizontal/horizontal_001.png", "vertical/vertical_000.png"]
    assert len(splits.train) == 18
    (clean / "bad.txt").write_text("vertical/nope.png\n")
    with pytest.raises(DataError, match="1 of 1 entries name no image"):
        build_dataset(_data(clean, val_list="bad.txt"))


def test_check_data_lists_every_messy_file(messy):
    root, files = messy
    found = {p.path: (p.kind, p.severity) for p in check_dataset(_data(root))}
    assert found == {
        str(files["gif"]): ("not_photo", "error"),
        str(files["empty"]): ("unreadable", "error"),
        str(files["text"]): ("unreadable", "error"),
        str(files["truncated"]): ("unreadable", "error"),
        str(files["cmyk"]): ("converted", "warning"),
        str(files["16bit"]): ("converted", "warning"),
        str(files["spaces"]): ("name_spaces", "warning"),
    }


def test_training_data_stops_before_start_or_skips(messy, capsys):
    root, files = messy
    with pytest.raises(DataError, match=r"and 3 more; the data check, --check-data, lists them all"):
        build_dataset(_data(root))
    splits = build_dataset(_data(root, skip_bad=True))
    assert "skipped 4 bad file(s) of 19" in capsys.readouterr().err
    again = build_dataset(_data(root, skip_bad=True))  # the Trainer builds it again after the data check
    assert "skipped" not in capsys.readouterr().err and again.train.files == splits.train.files
    kept = {*splits.train.files, *splits.val.files}
    assert {files["cmyk"], files["16bit"], files["spaces"]} <= kept
    assert not kept & {files[k] for k in ("gif", "empty", "text", "truncated")}
    for dataset in (splits.train, splits.val):  # every kept file reads as 8-bit RGB, no crash mid-epoch
        for i in range(len(dataset)):
            image, _ = dataset[i]
            assert image.ndim == 3 and image.shape[2] == 3 and image.dtype.name == "uint8"


def test_finetune_check_data_cli(messy, tmp_path, capsys):
    root, files = messy
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{backbone: resnet18, head: classifier, backbone_weights: null}}\n"
                      f"data: {{format: imagefolder, root: '{root}'}}\n")
    assert main(["finetune", str(config), "--check-data"]) == 1
    err = capsys.readouterr().err
    assert "data check: 4 error(s), 3 warning(s)" in err
    for path in files.values():
        assert str(path) in err
    assert main(["finetune", str(config), "data.skip_bad=true", "--check-data"]) == 0
    assert "data check: 0 error(s), 3 warning(s)" in capsys.readouterr().err


@pytest.mark.skipif(not (__import__("conftest").SHARED / "data/hymenoptera/train").is_dir(),
                    reason="../shared/data/hymenoptera not available")
def test_hymenoptera_gif_placeholder_is_caught():
    from conftest import SHARED

    data = _data(SHARED / "data/hymenoptera/train")
    problems = check_dataset(data)
    assert [(p.kind, p.path.rsplit("/", 1)[-1]) for p in problems if p.severity == "error"] == \
        [("not_photo", "imageNotFound.gif")]
    assert any(p.kind == "name_spaces" and p.path.endswith("ant photos.jpg") for p in problems)
