"""Precise BatchNorm: statistics recomputed over train batches; frozen layers' statistics untouched."""
from __future__ import annotations

import torch
from synthetic.segmentation import config, make_dataset
from torch import nn

from seg_transfer.config import Config, from_dict
from seg_transfer.engine.precise_bn import recompute_bn_stats, trainable_bn
from seg_transfer.engine.trainer import Trainer
from seg_transfer.models.stages import stage_modules
from seg_transfer.transfer import apply_freeze


def test_running_stats_become_the_average_over_batches(one_thread):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    net.eval()
    batches = [torch.randn(4, 3, 8, 8) * (i + 1) + i for i in range(3)]
    used = recompute_bn_stats(net, batches, lambda x: net(x), limit=10)
    assert used == 3 and not net.training  # mode restored
    means = torch.stack([net[0](x).mean(dim=(0, 2, 3)) for x in batches])
    torch.testing.assert_close(net[1].running_mean, means.mean(0), rtol=1e-5, atol=1e-5)
    assert net[1].momentum == 0.1  # restored


def test_limit_and_frozen_layers_untouched(one_thread):
    from seg_transfer.models import build_model

    torch.manual_seed(0)
    model = build_model({"backbone": "resnet18", "head": "fcn", "num_classes": 3, "backbone_weights": None})
    apply_freeze(model, "partial", None, "layer3", True)
    frozen = {k: v.clone() for k, v in stage_modules(model)["layer1"].state_dict().items() if "running" in k}
    live = trainable_bn(model)
    assert live and all(bn not in live for bn in stage_modules(model)["layer1"].modules())
    calls = []
    used = recompute_bn_stats(model, iter(lambda: torch.randn(2, 3, 32, 32), None),
                              lambda x: calls.append(model(x)), limit=2)
    assert used == 2 and len(calls) == 2
    after = {k: v for k, v in stage_modules(model)["layer1"].state_dict().items() if "running" in k}
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)


def test_trainer_recomputes_before_each_evaluation(tmp_path, one_thread):
    root = make_dataset(tmp_path / "data", n=12)
    cfg = from_dict(Config, config(root, tmp_path, train={"epochs": 1, "precise_bn": 2},
                                   output={"num_predictions": 0}))
    t = Trainer(cfg, progress=False, log=lambda _m: None)
    seen = []
    original = t.precise_bn
    t.precise_bn = lambda epoch: seen.append(original(epoch)) or seen[-1]
    t.fit()
    assert seen == [1]  # 9 train images, batch 8, drop_last: one batch available
