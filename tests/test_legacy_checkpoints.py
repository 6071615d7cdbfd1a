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
    for field in fields:
        torch.testing.assert_close(getattr(result, field), expected[field], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, f=field: f"{name}.{f}: {m}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_legacy_checkpoint_config_rebuilds(name: str) -> None:
    """The saved model: block still passes today's config validation, and every tensor name fits."""
    model = load_checkpoint(LEGACY / f"{name}.pt")
    saved = torch.load(LEGACY / f"{name}.pt", weights_only=True)
    assert set(model.state_dict()) == set(saved["state_dict"])
    assert model.info.preprocess.to_dict() == saved["preprocess"]
