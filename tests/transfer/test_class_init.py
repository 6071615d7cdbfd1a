"""Class-aware init of a binary model (one sigmoid channel): it starts as the source's foreground logit
minus its background logit, so its probability is the source's softmax over the two classes."""
from __future__ import annotations

import pytest
import torch

from seg_transfer import create_model
from seg_transfer.transfer import class_aware_init
from seg_transfer.transfer.loading import load_matching

pytestmark = pytest.mark.usefixtures("one_thread")
SOURCE = ["background", "car", "Person", "dog"]


def make(seed: int, **kwargs):
    torch.manual_seed(seed)
    return create_model(backbone="resnet18", head="fcn", aux_loss=True, backbone_weights=None, **kwargs).eval()


def test_binary_init_is_the_two_class_softmax_of_the_source():
    source = make(0, classes=SOURCE)
    target = make(1, binary=True, classes=["person"])
    load_matching(target, source.state_dict())  # everything but the 1-channel classifiers
    assert class_aware_init(target, SOURCE, target.info.classes, source.state_dict(),
                            binary=True) == ["background", "person"]
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        src, tgt = source(x), target(x)
    for key in ("out", "aux"):
        two = src[key][:, [0, 2]].softmax(1)[:, 1]  # p(person) among {background, person}
        torch.testing.assert_close(tgt[key][:, 0].sigmoid(), two, rtol=1e-4, atol=1e-5)


def test_binary_init_needs_both_classes_in_the_source():
    source = make(0, classes=SOURCE)
    target = make(1, binary=True, classes=["horse"])
    load_matching(target, source.state_dict())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert class_aware_init(target, SOURCE, target.info.classes, source.state_dict(), binary=True) == []
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing copied
