"""``seg-transfer suggest``: uncertain images rank first, picks are spread in feature space (no two
near-duplicates), the CLI writes the list and the contact sheet, and bad input is one line."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from synthetic.segmentation import config, make_dataset

from seg_transfer import create_model
from seg_transfer.cli import main
from seg_transfer.predict import ClassificationResult, DetectionResult, Predictor, SegmentationResult
from seg_transfer.predict.suggest import entropy, select, suggest, uncertainty
from seg_transfer.run_folder import SUGGESTIONS_CSV, SUGGESTIONS_PNG, SUGGESTIONS_TXT

pytestmark = pytest.mark.usefixtures("one_thread")


def test_entropy_is_zero_when_sure_and_one_when_uniform():
    assert float(entropy(torch.tensor([1.0, 0.0, 0.0]))) == pytest.approx(0.0, abs=1e-6)
    assert float(entropy(torch.full((4,), 0.25))) == pytest.approx(1.0)


def test_an_unsure_image_ranks_above_a_sure_one():
    """Uncertainty from the results themselves: a segmentation whose pixels are split 50/50 and a
    classification at 0.5/0.5 score above their confident twins; the unsure image is picked first."""
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    sure = torch.zeros(2, 4, 4)
    sure[0] = 1.0
    unsure = torch.full((2, 4, 4), 0.5)
    seg = [SegmentationResult(image, p, p.argmax(0), ["a", "b"]) for p in (sure, unsure)]
    cls = [ClassificationResult(torch.tensor(p), ["a", "b"]) for p in ([0.99, 0.01], [0.5, 0.5])]
    for results in (seg, cls):
        u = [uncertainty(r) for r in results]
        assert u[1] > u[0]
        assert select(u, np.eye(2), 1)[0][0] == 1


def test_detection_uncertainty_is_one_minus_the_best_score():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)

    def boxes(*scores):
        n = len(scores)
        return DetectionResult(image, torch.zeros(n, 4), torch.ones(n, dtype=torch.long), torch.tensor(scores),
                               ["__background__", "a"])
    assert uncertainty(boxes(0.9, 0.2)) == pytest.approx(0.1)
    assert uncertainty(boxes()) == 1.0  # nothing found at all: as unsure as it gets


@pytest.mark.parametrize("model", [
    {"name": "resnet18", "weights": None, "num_classes": 3},  # a zoo classifier: its backbone is a view
    {"backbone": "resnet18", "neck": "fpn", "head": "fcos", "classes": ["__background__", "a", "b"],
     "backbone_weights": None, "resize": 64},
])
def test_suggest_takes_features_from_every_kind_of_model(model, tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    torch.manual_seed(0)
    found = suggest(Predictor(create_model(**model)), sorted(tmp_path.glob("*.png")), 2, tmp_path / "out",
                    progress=False)
    assert len(found.picks) == 2 and all(s.features.dim() == 1 and s.features.numel() > 0 for s in found.scored)
    assert all(f.is_file() for f in found.files)


def test_picks_are_spread_in_feature_space():
    """Two near-duplicates of the most uncertain image and a distinct, less uncertain one: the second pick
    is the distinct image, not the duplicate."""
    features = np.array([[1.0, 0.0], [0.999, 0.01], [0.0, 1.0], [0.7, 0.7]])
    u = [0.9, 0.89, 0.5, 0.1]
    picks = select(u, features, 3)
    assert [i for i, _, _ in picks][:2] == [0, 2]
    assert 1 not in [i for i, _, _ in picks[:2]]
    assert np.isnan(picks[0][1]) and picks[1][1] > 0.5


@pytest.fixture(scope="module")
def run_and_pool(tmp_path_factory):
    """A one-epoch segmentation run and a pool of its kind of images."""
    tmp = tmp_path_factory.mktemp("suggest")
    root = make_dataset(tmp / "data", n=8)
    cfg = config(root, tmp / "runs", train={"epochs": 1, "batch_size": 4})
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(tmp / "cfg.yaml"), "-q"]) == 0
    pool = make_dataset(tmp / "pool", n=6, seed=4) / "images"
    return tmp / "runs" / "run", pool


def test_cli_writes_the_list_and_the_contact_sheet(run_and_pool, tmp_path, capsys):
    run, pool = run_and_pool
    Image.open(pool / "seqA_000.png").save(pool / "twin.png")  # an exact duplicate in the pool
    out = tmp_path / "picks"
    assert main(["suggest", str(run), "--pool", str(pool), "--n", "3", "--out", str(out), "-q"]) == 0
    assert "suggested 3 of 7 pool images" in capsys.readouterr().out
    with open(out / SUGGESTIONS_CSV) as f:
        rows = list(csv.DictReader(f))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "", "", "", ""]
    picked = (out / SUGGESTIONS_TXT).read_text().split()
    assert picked == [r["image"] for r in rows[:3]]
    names = {p.split("/")[-1] for p in picked}
    assert not {"twin.png", "seqA_000.png"} <= names  # never both twins
    sheet = Image.open(out / SUGGESTIONS_PNG)
    assert sheet.width == 3 * 256 and sheet.height > 36


@pytest.mark.parametrize("case,message", [
    ("missing_run", "no such run folder"),
    ("empty_pool", "--pool: "),
    ("no_best", "no best.pt"),
])
def test_bad_input_is_one_line(run_and_pool, tmp_path, capsys, case, message):
    run, pool = run_and_pool
    (tmp_path / "empty").mkdir()
    run_dir = {"missing_run": tmp_path / "nowhere", "no_best": tmp_path}.get(case, run)
    pool_dir = tmp_path / "empty" if case == "empty_pool" else pool
    assert main(["suggest", str(run_dir), "--pool", str(pool_dir), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
