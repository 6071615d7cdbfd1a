"""The self-supervised losses: what each rewards, and every method training a backbone end to end."""
from __future__ import annotations

import pytest
import torch

from seg_transfer.config import SSL_METHODS, PretrainConfig
from seg_transfer.engine.pretrain.methods import METHODS, SSLModel, nt_xent, pixel_contrast, vicreg_loss
from seg_transfer.engine.pretrain.views import cell_points
from seg_transfer.models.backbones import build_backbone

from .test_views import windows


def test_registry_matches_the_config_choices():
    assert set(METHODS) == set(SSL_METHODS)


def test_nt_xent_prefers_matching_views():
    torch.manual_seed(0)
    z = torch.randn(8, 16)
    assert nt_xent(z, z + 0.01 * torch.randn(8, 16), 0.1) < nt_xent(z, torch.randn(8, 16), 0.1) - 1


def test_vicreg_rewards_invariance_and_spread():
    torch.manual_seed(0)
    z = torch.randn(64, 8)
    collapsed = torch.zeros(64, 8)
    assert vicreg_loss(z, z) < vicreg_loss(z, torch.randn(64, 8))  # invariance
    assert vicreg_loss(z, z) < vicreg_loss(collapsed, collapsed)  # variance: a collapse costs


def test_pixel_contrast_pairs_cells_that_see_the_same_point():
    """Two views of one window, the second mirrored: cell (i, j) of one sees what (i, G-1-j) of the other
    sees; features equal there are rewarded, the same features un-mirrored are not."""
    torch.manual_seed(0)
    g = 3
    p1 = cell_points(windows(0, 0, 1.0, False), 12, g)
    p2 = cell_points(windows(0, 0, 1.0, True), 12, g)
    d1 = torch.randn(1, 8, g, g)
    matched = pixel_contrast(d1, d1.flip(-1), p1, p2, 0.1)
    unmatched = pixel_contrast(d1, d1, p1, p2, 0.1)
    assert matched < unmatched - 1
    far = cell_points(windows(500, 500, 1.0, False), 12, g)  # no overlap: no positive, no loss
    assert pixel_contrast(d1, d1, p1, far, 0.1) == 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_the_backbone(name):
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", weights=None)
    cfg = PretrainConfig(method=name, hidden_dim=32, projection_dim=16)
    model = SSLModel(backbone, METHODS[name](backbone.out_channels["layer4"], cfg))
    v1, v2 = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    p = cell_points(windows(0, 0, 1.0, False, n=4), 32, 1)
    losses = model(v1, v2, p, p)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    first = next(backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
