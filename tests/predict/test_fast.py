"""The eager fast path: the same outputs as the model (BatchNorm folded, aux head dropped, channels-last),
and the model itself untouched."""
from __future__ import annotations

import pytest
import torch
import torchvision

from seg_transfer.predict.fast import drop_aux_heads, fold_batchnorm, optimize


@pytest.mark.parametrize("builder", ["fcn_resnet50", "lraspp_mobilenet_v3_large", "resnet18", "mobilenet_v2"])
def test_optimized_copy_matches_and_leaves_the_model(one_thread, builder):
    torch.manual_seed(0)
    segmentation = builder in torchvision.models.list_models(torchvision.models.segmentation)
    kwargs = {"weights_backbone": None} if segmentation else {}
    if builder == "fcn_resnet50":
        kwargs["aux_loss"] = True
    model = torchvision.models.get_model(builder, weights=None, **kwargs).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, so folding has something to fold
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = optimize(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    x = torch.randn(1, 3, 96, 128)
    with torch.inference_mode():
        ref, got = model(x), fast(x.contiguous(memory_format=torch.channels_last))
    if isinstance(ref, dict):
        assert "aux" not in got and ("aux" in ref) == (builder == "fcn_resnet50")
        ref, got = ref["out"], got["out"]
    assert torch.allclose(got, ref, rtol=1e-3, atol=1e-3 * ref.abs().max().item())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_and_drop_counts():
    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, aux_loss=True).eval()
    assert drop_aux_heads(model) == 1 and model.aux_classifier is None
    bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        assert fold_batchnorm(model) == bns  # every BatchNorm of ResNet and the FCN head follows a convolution
