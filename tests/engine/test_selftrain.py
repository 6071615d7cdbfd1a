"""Self-training (``selftrain:``): only pseudo-labels above the threshold enter the loss, the accepted share
is logged, and a short run goes end to end through the CLI (segmentation and classification)."""
from __future__ import annotations

import csv
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
import yaml
from synthetic.classification import make_classes
from synthetic.segmentation import config, make_dataset
from torch import nn

from seg_transfer.cli import main
from seg_transfer.config import ConfigError, SelfTrainConfig, from_dict
from seg_transfer.data.strong_augment import StrongAugment
from seg_transfer.engine.selftrain import SelfTraining, pseudo_label_loss
from seg_transfer.engine.tasks.classification import ClassificationTask
from seg_transfer.engine.tasks.segmentation import SegmentationTask

pytestmark = pytest.mark.usefixtures("one_thread")


def test_only_pseudo_labels_above_the_threshold_enter_the_loss():
    """Teacher confidences known by construction: the loss is the cross-entropy over exactly the pixels
    whose softmax maximum reaches 0.9 (and are kept), divided by all kept pixels."""
    teacher = torch.zeros(1, 3, 2, 3)
    teacher[0, 0, 0, 0] = 10.0   # ~1.0 on class 0: accepted
    teacher[0, 1, 0, 1] = 0.5    # ~0.45 on class 1: rejected
    teacher[0, 2, 0, 2] = 10.0   # accepted, but not kept (padding / cutout)
    teacher[0, 2, 1, 0] = 4.0    # 0.965 on class 2: accepted
    keep = torch.ones(1, 2, 3, dtype=torch.bool)
    keep[0, 0, 2] = False
    student = torch.randn(1, 3, 2, 3, requires_grad=True)
    loss, accepted, kept = pseudo_label_loss(teacher, student, keep, threshold=0.9)
    assert (int(accepted), int(kept)) == (2, 5)
    ce = F.cross_entropy(student, teacher.argmax(1), reduction="none")[0]
    assert torch.allclose(loss, (ce[0, 0] + ce[1, 0]) / 5)
    loss.backward()  # the gradient reaches only the accepted pixels
    touched = student.grad.abs().sum(1)[0] > 0
    assert touched.tolist() == [[True, False, False], [True, False, False]]


class FixedLogits(nn.Module):
    """A stub classifier whose logits are given per image (by its mean value x 2, the values in [0, 1] the
    strong view keeps): the confidences the test controls. One parameter so the loss has a gradient."""

    def __init__(self, table: dict[int, list[float]]) -> None:
        super().__init__()
        self.table, self.scale = table, nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([torch.tensor(self.table[round(2 * float(img.mean()))]) for img in x]) * self.scale


def test_selftraining_counts_and_weights_what_it_accepts(tmp_path):
    """Images the stub is sure about (p 0.98) are accepted, the unsure one (p 0.55) is not; the share is
    what ``row()`` reports, and the loss is ``weight`` x the accepted images' cross-entropy over all."""
    table = {0: [4.0, 0.0], 1: [0.2, 0.0], 2: [0.0, 4.0]}
    model = FixedLogits(table)
    batch = torch.stack([torch.full((3, 4, 4), float(v)) for v in (0, 0.5, 1)])

    def stream(epoch):
        while True:
            yield batch, torch.zeros(3, dtype=torch.long)

    task = ClassificationTask.__new__(ClassificationTask)
    identity = StrongAugment([0, 0, 0], [1, 1, 1])
    identity.one = lambda image, generator: (image, torch.ones(image.shape[-2:], dtype=torch.bool))  # type: ignore
    st = SelfTraining(task, SelfTrainConfig(threshold=0.9, weight=0.5), identity, stream, ignore_index=-100, seed=0)
    st.start(0)
    loss = st.loss(model)
    logits = torch.tensor([table[0], table[1], table[2]])
    ce = F.cross_entropy(logits, logits.argmax(1), reduction="none")
    assert torch.allclose(loss, 0.5 * (ce[0] + ce[2]) / 3)
    st.loss(model)
    assert st.row() == {"accepted": pytest.approx(4 / 6)}
    late = SelfTraining(task, SelfTrainConfig(start_epoch=1), identity, stream, ignore_index=-100, seed=0)
    late.start(0)
    assert late.loss(model) is None and math.isnan(late.row()["accepted"])


def test_strong_view_keeps_geometry_and_marks_the_cutout():
    images = torch.rand(6, 3, 32, 32)
    strong, kept = StrongAugment([0.5] * 3, [0.25] * 3)(images, torch.Generator().manual_seed(0))
    assert strong.shape == images.shape and kept.shape == (6, 32, 32)
    assert not torch.equal(strong, images) and (~kept).any() and kept.any()
    cut = strong.permute(0, 2, 3, 1)[~kept]
    assert torch.allclose(cut, torch.zeros_like(cut))  # grey 0.5 normalised by mean 0.5


def test_segmentation_teacher_reads_the_main_output():
    task = SegmentationTask.__new__(SegmentationTask)
    model = nn.Module()
    model.forward = lambda x: {"out": x[:, :2], "aux": x}  # type: ignore[method-assign]
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(task.class_logits(model, x), x[:, :2])


@pytest.mark.parametrize("key,value,message", [
    ("threshold", 1.5, "selftrain.threshold: expected a confidence in (0, 1]"),
    ("weight", -1, "selftrain.weight: expected a weight >= 0"),
    ("ratio", 0, "selftrain.ratio: expected at least 1"),
])
def test_bad_selftrain_settings_name_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("]", r"\]")):
        from_dict(SelfTrainConfig, {key: value}, "selftrain")


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("labelled"), n=10)
    pool = make_dataset(tmp_path_factory.mktemp("pool"), n=6, seed=5)
    shutil.rmtree(pool / "masks")
    return root, pool / "images"


def _run(tmp_path, cfg, *overrides):
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["finetune", str(path), "-q", *overrides])


def test_selftraining_run_through_the_cli_logs_the_accepted_share(seg_data, tmp_path, capsys):
    root, pool = seg_data
    cfg = config(root, tmp_path / "runs", train={"epochs": 2, "batch_size": 4},
                 selftrain={"unlabelled": str(pool), "threshold": 0.5, "start_epoch": 1})
    assert _run(tmp_path, cfg) == 0
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert "self-training: 6 unlabelled images" in out
    assert "accepted" not in epochs[0] and "  accepted " in epochs[1]  # pseudo-labels from epoch 2 (start_epoch 1)
    with open(tmp_path / "runs" / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["accepted"] == "nan" and 0.0 <= float(rows[1]["accepted"]) <= 1.0  # labelled-only epoch 1
    saved = yaml.safe_load((tmp_path / "runs" / "run" / "config.yaml").read_text())
    assert saved["selftrain"]["unlabelled"] == str(pool.resolve())


def test_selftraining_classification_with_the_device_recipe(tmp_path, capsys):
    root = make_classes(tmp_path / "cls", n=6)
    pool = make_classes(tmp_path / "pool", n=3, seed=1)
    cfg = {"model": {"backbone": "resnet18", "head": "classifier", "backbone_weights": None, "resize": 32},
           "data": {"format": "imagefolder", "root": str(root), "val_ratio": 0.25, "seed": 0},
           "augment": {"backend": "device"},
           "train": {"epochs": 1, "batch_size": 4, "amp": "off", "workers": 0, "device": "cpu"},
           "selftrain": {"unlabelled": str(pool), "threshold": 0.5, "ratio": 2},
           "output": {"dir": str(tmp_path / "runs"), "name": "cls", "num_predictions": 0}}
    assert _run(tmp_path, cfg) == 0
    assert "images whose confidence reaches 0.5" in capsys.readouterr().out
    with open(tmp_path / "runs" / "cls" / "metrics.csv") as f:
        assert 0.0 <= float(next(csv.DictReader(f))["accepted"]) <= 1.0


@pytest.mark.parametrize("change,message", [
    ({"selftrain": {"unlabelled": "nowhere"}}, "selftrain.unlabelled: nowhere: no such folder"),
    ({"selftrain": {"unlabelled": "EMPTY"}}, "holds no images"),
    ({"selftrain": {"unlabelled": "POOL"}, "cache": {"enabled": True},
      "freeze": {"strategy": "feature_extraction"}}, "cache.enabled: the feature cache trains on stored features"),
])
def test_bad_selftraining_input_is_one_line(seg_data, tmp_path, capsys, change, message):
    root, pool = seg_data
    (tmp_path / "empty").mkdir()
    cfg = config(root, tmp_path / "runs", **change)
    where = cfg["selftrain"]["unlabelled"]
    cfg["selftrain"]["unlabelled"] = {"EMPTY": str(tmp_path / "empty"), "POOL": str(pool)}.get(where, where)
    assert _run(tmp_path, cfg) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
