"""The page in a real browser: Debian's chromium, headless, opens ``/?sample`` (the page fetches the sample
photo and posts it to /predict as an upload), and the screenshot shows the overlay and its legend."""
from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from seg_transfer.viz import colour

from .helpers import predictor

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from seg_transfer.serve.app import running  # noqa: E402
from seg_transfer.serve.client import request  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1100, 700)
# Where the page lays out its parts at that window size: the left panel (legend), the drawing.
PANEL = (0, 40, 300, 700)
DRAWING = (310, 60, 1100, 700)


def screenshot(url: str, out) -> np.ndarray:
    """The page after its scripts ran (virtual time lets the fetches finish before the shot)."""
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--window-size={WINDOW[0]},{WINDOW[1]}", "--virtual-time-budget=20000",
                    f"--screenshot={out}", url], check=True, capture_output=True, timeout=120)
    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def crop(shot: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x1, y1, x2, y2 = box
    return shot[y1:y2, x1:x2]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_page_renders_overlay_and_legend(standin, tmp_path):
    p = predictor(standin, "segmentation")
    with running(p) as url:
        status, sample, _ = request(url + "/sample.jpg")
        assert status == 200
        expected = p.predict(Image.open(io.BytesIO(sample)))
        idle = screenshot(url + "/", tmp_path / "idle.png")
        shot = screenshot(url + "/?sample", tmp_path / "page.png")
        metrics = request(url + "/metrics")[1].decode()
    assert 'seg_transfer_requests_total{path="/predict",status="200"} 1' in metrics  # the page's upload
    drawing, before = crop(shot, DRAWING), crop(idle, DRAWING)
    assert drawing.std() > 20 and before.std() < drawing.std() / 4, "the drawing area is blank"
    # the legend: a swatch in the colour of the class covering most of the photo
    top = max(expected.fractions(), key=expected.fractions().get)
    swatch = np.array(colour(expected.class_index(top)))
    assert (np.abs(crop(shot, PANEL) - swatch).sum(-1) == 0).sum() >= 100, f"no legend swatch in {top}'s colour"
    assert (np.abs(crop(idle, PANEL) - swatch).sum(-1) == 0).sum() == 0
