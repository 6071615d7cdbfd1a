"""The backbone table is measured from the models (on the meta device) and cached per torch version."""
from __future__ import annotations

import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from seg_transfer.models import weights as W
from seg_transfer.models.backbones import build_backbone
from seg_transfer.models.catalog import FLOPS_SIZE, backbone_facts, measure, table_path, weights_state


def test_meta_measurement_matches_a_real_forward():
    """Parameters, FLOPs, strides and channels on the meta device equal those of the real CPU model."""
    name = "mobilenet_v3_small"
    facts = measure(name)
    real = build_backbone(name, None).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        real(torch.zeros(1, 3, FLOPS_SIZE, FLOPS_SIZE))
    assert facts.gflops == round(counter.get_total_flops() / 1e9, 1) and facts.gflops > 0
    assert facts.params_m == round(sum(p.numel() for p in real.parameters()) / 1e6, 1)
    assert facts.strides == list(real.strides.values()) and facts.channels == list(real.out_channels.values())


def test_table_cached_and_measured_once(torch_home):
    table_path().unlink(missing_ok=True)
    names = ["resnet18", "regnet_x_400mf"]
    seen: list[str] = []
    first = backbone_facts(seen.append, names)
    assert len(seen) == 2 and [f.name for f in first] == names
    assert set(json.loads(table_path().read_text())["rows"]) >= set(names)
    seen.clear()
    assert backbone_facts(seen.append, names) == first and seen == []  # from the cache


def test_weights_state_names_entries_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # a file of its own: the suite's stand-ins stay as they are
    assert weights_state("resnet50") == "IMAGENET1K_V1, IMAGENET1K_V2* (not cached)"
    path = W.cache_path(W.weights_enum("resnet50").DEFAULT)
    path.parent.mkdir(parents=True)
    path.touch()
    assert weights_state("resnet50") == "IMAGENET1K_V1, IMAGENET1K_V2* (cached)"
