"""Two views on the device and where their feature-map cells look in the source image."""
from __future__ import annotations

import pytest
import torch

from seg_transfer.data.device_augment import Windows, canvas_collate
from seg_transfer.engine.pretrain.views import TwoViews, cell_points, colour


def windows(top, left, step, flip, n=1):
    full = (torch.zeros(n, dtype=torch.float64), torch.full((n,), 8.0, dtype=torch.float64))
    t = lambda v: torch.full((n,), float(v), dtype=torch.float64)  # noqa: E731
    return Windows(t(top), t(left), t(step), t(step), full, full, torch.full((n,), flip))


def test_cell_points_map_cell_centres_to_the_source():
    # an 8 px view of the source window starting at (10, 20), 2 source px per output px, a 2x2 grid
    p = cell_points(windows(10, 20, 2.0, False), size=8, grid=2)
    assert p.shape == (1, 2, 2, 3)
    # cell 0's centre is output pixel 1.5 -> source 10 + 2.0 * 2 - 0.5 = 13.5; cell 1: 21.5; side 4 px x 2
    assert p[0, :, 0, 0].tolist() == [13.5, 21.5] and p[0, 0, :, 1].tolist() == [23.5, 31.5]
    assert torch.all(p[..., 2] == 8.0)
    flipped = cell_points(windows(10, 20, 2.0, True), size=8, grid=2)
    assert flipped[0, 0, :, 1].tolist() == [31.5, 23.5]  # mirrored columns
    assert torch.equal(flipped[..., 0], p[..., 0])


def test_two_views_differ_and_are_normalised():
    images = [torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8), torch.randint(0, 256, (3, 60, 45), dtype=torch.uint8)]
    canvas = canvas_collate([(im, 0) for im in images])
    v1, v2 = TwoViews(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))(canvas, torch.Generator().manual_seed(0))
    assert v1.images.shape == v2.images.shape == (2, 3, 32, 32)
    assert not torch.equal(v1.images, v2.images)
    assert v1.images.min() >= -2 - 1e-5 and v1.images.max() <= 2 + 1e-5  # (x - 0.5) / 0.25 of [0, 1]
    again = TwoViews(32, (0.5,) * 3, (0.25,) * 3)(canvas, torch.Generator().manual_seed(0))[0]
    assert torch.equal(v1.images, again.images)  # the generator decides everything


@pytest.mark.parametrize("p_gray", [0.0, 1.0])
def test_colour_stays_in_range_and_grayscale_is_gray(p_gray):
    images = torch.rand(6, 3, 8, 8)
    out = colour(images, torch.Generator().manual_seed(1), strength=0.4, p_gray=p_gray)
    assert out.min() >= 0 and out.max() <= 1
    channels_equal = torch.allclose(out[:, 0], out[:, 1]) and torch.allclose(out[:, 1], out[:, 2])
    assert channels_equal == (p_gray == 1.0)
