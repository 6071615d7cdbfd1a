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
        # The stand-in's scores tie in the fourth digit, so which of two near-tied, overlapping candidates NMS
        # keeps, and which make the top 100, is the CPU's kernels' choice (an AVX2 and an AMX machine here
        # differ by 1e-4 in scores and in 1 of the 100 candidates at the cut). So: the detections as a set,
        # each expected one matched by a got one of its label, score within 5e-4 and box within 0.05 px, all
        # but 2% of them.
        unmatched = _unmatched(got, expected)
        assert unmatched <= 0.02 * len(expected["scores"]), f"{name}: {unmatched} detections not found again"
        assert len(got["scores"]) == len(expected["scores"])
        fields = [f for f in fields if f not in ("boxes", "labels", "scores")]
    for field in fields:
        torch.testing.assert_close(got[field], expected[field], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, f=field: f"{name}.{f}: {m}")


def _unmatched(got: dict, expected: dict) -> int:
    """How many of ``expected``'s detections have no unused counterpart in ``got`` (same label, score within
    5e-4, every box coordinate within 0.05 px), matched greedily."""
    free = torch.ones(len(got["scores"]), dtype=torch.bool)
    missing = 0
    for box, label, score in zip(expected["boxes"], expected["labels"], expected["scores"]):
        near = (free & (got["labels"] == label) & ((got["scores"] - score).abs() <= 5e-4)
                & ((got["boxes"] - box).abs() <= 0.05).all(dim=1)).nonzero()
        if len(near):
            free[near[0, 0]] = False
        else:
            missing += 1
    return missing


@pytest.mark.parametrize("name", sorted(MODELS))
def test_legacy_checkpoint_config_rebuilds(name: str) -> None:
    """The saved model: block still passes today's config validation, and every tensor name fits."""
    model = load_checkpoint(LEGACY / f"{name}.pt")
    saved = torch.load(LEGACY / f"{name}.pt", weights_only=True)
    assert set(model.state_dict()) == set(saved["state_dict"])
    assert model.info.preprocess.to_dict() == saved["preprocess"]
