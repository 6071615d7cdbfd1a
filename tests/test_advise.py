"""advise(): the four quadrants (and very large data), thresholds at their boundaries, bad inputs, and
snippets that parse as YAML into the config's keys."""
from __future__ import annotations

import pytest
import yaml

from seg_transfer.advise import MEASURED, MEASURED_SUMMARY, SMALL_BELOW, TASKS, VERY_LARGE_FROM, Advice, advise, size_class
from seg_transfer.config import Config, from_dict
from seg_transfer.errors import ConfigError
from seg_transfer.transfer import STRATEGIES


@pytest.mark.parametrize("n, similarity, strategy, unfreeze_from, mult, cache, pretrained", [
    (300, "high", "feature_extraction", None, 0.1, True, True),
    (300, "low", "partial", "layer3", 0.1, False, True),
    (5_000, "high", "full", None, 0.1, False, True),
    (5_000, "low", "full", None, 1.0, False, True),
    (200_000, "high", "full", None, 0.1, False, True),   # similar data never needs scratch
    (200_000, "low", "full", None, 1.0, False, False),   # very large and different: from scratch
])
def test_quadrants(n, similarity, strategy, unfreeze_from, mult, cache, pretrained):
    a = advise(n, similarity)
    assert (a.strategy, a.unfreeze_from, a.backbone_lr_mult, a.cache, a.pretrained) == \
        (strategy, unfreeze_from, mult, cache, pretrained)
    assert a.strategy in STRATEGIES and a.similarity == similarity and a.rationale
    assert a.lr > 0 and a.epochs > 0


def test_small_sets_train_longer():
    assert advise(300, "high").epochs > advise(5_000, "high").epochs


@pytest.mark.parametrize("n, expected", [
    (1, "small"), (SMALL_BELOW - 1, "small"), (SMALL_BELOW, "large"),
    (VERY_LARGE_FROM - 1, "large"), (VERY_LARGE_FROM, "very large"),
])
def test_default_thresholds(n, expected):
    assert size_class(n) == expected
    assert advise(n, "high").size == expected


def test_thresholds_are_parameters():
    assert advise(1_500, "high", small_below=2_000).strategy == "feature_extraction"
    assert advise(2_000, "high", small_below=2_000).strategy == "full"
    assert advise(5_000, "low", very_large_from=5_000).pretrained is False
    assert advise(4_999, "low", very_large_from=5_000).pretrained is True


@pytest.mark.parametrize("similarity, match", [("hgih", "did you mean 'high'"), ("medium", "valid: high, low"),
                                               ("HIGH", "unknown similarity")])
def test_bad_similarity(similarity, match):
    with pytest.raises(ConfigError, match=match):
        advise(100, similarity)


@pytest.mark.parametrize("n", [0, -5, 2.5, True, "100"])
def test_bad_num_images(n):
    with pytest.raises(ConfigError, match="num_images"):
        advise(n, "high")


def test_bad_thresholds():
    with pytest.raises(ConfigError):
        advise(10, "high", small_below=10_000, very_large_from=100)


@pytest.mark.parametrize("n, similarity", [(300, "high"), (300, "low"), (5_000, "high"), (5_000, "low"),
                                           (200_000, "low")])
def test_snippet_parses(n, similarity):
    a = advise(n, similarity)
    text = a.snippet()
    assert text.startswith("# ") and a.rationale in text.splitlines()[0]
    data = yaml.safe_load(text)
    assert data == a.config()
    assert set(data) <= {"model", "freeze", "train", "cache"} and {"freeze", "train", "cache"} <= set(data)
    assert data["freeze"]["strategy"] == a.strategy and data["freeze"]["bn"] is True
    assert ("unfreeze_from" in data["freeze"]) == (a.strategy == "partial")
    assert set(data["train"]) == {"backbone_lr_mult", "lr", "epochs"} | {f.key.split(".")[1] for f in a.findings}
    assert data["cache"] == {"enabled": a.cache}
    if not a.pretrained:
        assert data["model"] == {"weights": None, "backbone_weights": None}


def test_snippet_is_a_valid_config():
    config = pytest.importorskip("seg_transfer.config")
    if not hasattr(config, "Config"):
        pytest.skip("no training Config in seg_transfer.config yet")
    for n, similarity in [(300, "high"), (300, "low"), (5_000, "low"), (200_000, "low")]:
        cfg = config.from_dict(config.Config, yaml.safe_load(advise(n, similarity).snippet()))
        assert cfg.freeze.strategy == advise(n, similarity).strategy


def test_measured_slot():
    assert advise(300, "high").measured == {}
    assert "measured here" not in advise(300, "high").snippet()
    a = advise(300, "high", measured={"feature_extraction": (0.61234, 95.4), "full": (0.65, 1200.0)})
    text = a.snippet()
    assert "# measured here: feature_extraction: mIoU 0.6123 in 95 s" in text
    assert "# measured here: full: mIoU 0.6500 in 1200 s" in text
    assert yaml.safe_load(text) == a.config()  # comments only: the config is unchanged


def test_advice_is_immutable():
    with pytest.raises(AttributeError):
        advise(300, "high").strategy = "full"  # type: ignore[misc]
    assert isinstance(advise(300, "high"), Advice)


@pytest.mark.parametrize("task", TASKS)
def test_measured_settings_are_valid_config_and_quoted(task):
    """Each measured setting is a real config key with a value the config accepts, in the snippet with its figures."""
    a = advise(300, "low", task=task)
    assert a.findings == MEASURED[task]
    for finding in a.findings:
        block, key = finding.key.split(".", 1)
        cfg = from_dict(Config, {block: {key: finding.value}})
        assert getattr(getattr(cfg, block), key) == finding.value
        assert yaml.safe_load(a.snippet())[block][key] == finding.value
        assert f"#   {finding.key}: " in a.snippet() and finding.evidence in a.snippet()
    assert MEASURED_SUMMARY[task] in a.snippet()  # every task says what its table showed, settings or not


def test_segmentation_quotes_its_cross_validated_table():
    keys = {f.key for f in advise(300, "low").findings}
    assert {"train.class_weights", "train.precise_bn"} <= keys
    with pytest.raises(ConfigError, match="did you mean 'detection'"):
        advise(300, "low", task="detektion")
