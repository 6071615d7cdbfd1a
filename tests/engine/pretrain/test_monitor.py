"""The k-NN monitor: the vote, the cell labels of a segmentation probe, and both on real datasets' formats."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from synthetic.classification import make_classes
from synthetic.segmentation import CLASSES, make_dataset

from seg_transfer.engine.pretrain.monitor import KnnMonitor, cell_labels, knn_accuracy
from seg_transfer.models.backbones import build_backbone


def test_knn_accuracy_on_separated_and_mixed_clusters():
    torch.manual_seed(0)
    centres = F.normalize(torch.randn(3, 16), dim=1)
    labels = torch.arange(3).repeat_interleave(10)
    bank = F.normalize(centres[labels] + 0.05 * torch.randn(30, 16), dim=1)
    queries = F.normalize(centres[labels] + 0.05 * torch.randn(30, 16), dim=1)
    assert knn_accuracy(bank, labels, queries, labels, k=5, num_classes=3) == 1.0
    shuffled = labels[torch.randperm(30)]
    assert knn_accuracy(bank, shuffled, queries, labels, k=5, num_classes=3) < 0.7


def test_cell_labels_need_a_majority():
    mask = torch.zeros(1, 4, 4, dtype=torch.int64)
    mask[0, :2, 2:] = 1  # top-right cell: class 1
    mask[0, 2:, :2] = 255  # bottom-left: ignored
    mask[0, 2:, 2:] = torch.tensor([[1, 2], [3, 255]])  # bottom-right: no class has half
    assert cell_labels(mask, (2, 2), 4).tolist() == [[[0, 1], [-1, -1]]]


def test_monitor_reads_classification_and_segmentation_formats(tmp_path):
    backbone = build_backbone("resnet18", weights=None).eval()
    mean, std = (0.5,) * 3, (0.25,) * 3
    classes = make_classes(tmp_path / "cls", n=8)
    cls = KnnMonitor({"format": "imagefolder", "root": str(classes), "val_ratio": 0.5}, 32, 3, mean, std, False)
    seg_root = make_dataset(tmp_path / "seg", n=8)
    seg = KnnMonitor({"format": "folder", "root": str(seg_root), "val_ratio": 0.5, "classes": CLASSES}, 64, 3, mean, std, False)
    assert (cls.task, seg.task) == ("classification", "segmentation")
    for monitor in (cls, seg):
        accuracy = monitor(backbone, torch.device("cpu"))
        assert accuracy is not None and 0 <= accuracy <= 1
    assert not backbone.training  # its mode is given back
