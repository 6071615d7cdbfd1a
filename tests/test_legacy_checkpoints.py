"""Checkpoints written before the layout move (``tests/fixtures/legacy``, by commit 02c3d7f) still load,
with the same task, classes and preprocessing, and predict what that code predicted."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from seg_transfer import Predictor, load_checkpoint

LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy"
sys.path.insert(0, str(LEGACY))
from make_checkpoints import MODELS, PREDICT_OPTIONS, legacy_image  # noqa: E402

EXPECTED = torch.load(LEGACY / "expected.pt", weights_only=True)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_legacy_checkpoint_predicts_as_before(name: str, one_thread) -> None:
    expected = EXPECTED[name]
    predictor = Predictor.from_checkpoint(LEGACY / f"{name}.pt")
    assert predictor.model.info.task == expected["task"]
    assert predictor.classes == expected["classes"]
    result = predictor.predict(legacy_image(), **PREDICT_OPTIONS.get(expected["task"], {}))
    fields = [k for k in expected if k not in ("task", "classes")]
    assert fields
    got = {f: getattr(result, f) for f in fields}
    if expected["task"] == "detection":
        # The stand-in's scores tie in the fourth digit, and which of two tied, overlapping candidates NMS
        # keeps is the sort kernel's choice, which differs between CPUs (here 1 box of 100 moved by 2 px).
        # So: scores and labels exactly, as a set ordered by (score, label, box); boxes row for row but
        # for at most 2% of them.
        got, expected = _ordered(got), _ordered(expected)
        moved = ~torch.isclose(got["boxes"], expected["boxes"], rtol=1e-4, atol=1e-5).all(dim=1)
        assert moved.float().mean() <= 0.02, f"{name}: {int(moved.sum())} of {len(moved)} boxes differ"
        fields = [f for f in fields if f != "boxes"]
    for field in fields:
        torch.testing.assert_close(got[field], expected[field], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, f=field: f"{name}.{f}: {m}")


def _ordered(dets: dict) -> dict:
    """Detections sorted by (score, label, x1, y1, x2, y2), scores rounded to 1e-5 so near-ties sort alike."""
    keys = torch.cat([(dets["scores"] * 1e5).round()[:, None], dets["labels"][:, None].float(),
                      dets["boxes"].round()], dim=1).tolist()
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return {**dets, **{f: dets[f][order] for f in ("boxes", "labels", "scores")}}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_legacy_checkpoint_config_rebuilds(name: str) -> None:
    """The saved model: block still passes today's config validation, and every tensor name fits."""
    model = load_checkpoint(LEGACY / f"{name}.pt")
    saved = torch.load(LEGACY / f"{name}.pt", weights_only=True)
    assert set(model.state_dict()) == set(saved["state_dict"])
    assert model.info.preprocess.to_dict() == saved["preprocess"]
