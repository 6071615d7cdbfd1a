"""Frozen-backbone feature cache: training on it equals training on ``model(x)``, copies are distinct
reproducible augmentations served in rotation, and unfrozen backbones, oversized caches and BatchNorm
statistics are handled."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from seg_transfer import create_model
from seg_transfer.data.segmentation import SegCollate, SegTransform
from seg_transfer.data.transforms import build_pipeline
from seg_transfer.engine.cache import CachedFeatureDataset, FeatureCache, can_cache, collate_features, estimate_bytes
from seg_transfer.engine.distributed import EpochSeeded, item_seed
from seg_transfer.engine.split_forward import decode, encode, eval_mode
from seg_transfer.errors import ConfigError
from seg_transfer.transfer import apply_freeze

SIZE = 64
RANDOM_STEPS = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "RandomCrop", "height": 48, "width": 48}]


pytestmark = pytest.mark.usefixtures("one_thread")


class Arrays(torch.utils.data.Dataset):
    """In-memory uint8 images and int64 masks, with a ``transform`` as SegDataset has."""

    def __init__(self, n: int, transform: SegTransform, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
        self.masks = rng.integers(0, 3, (n, SIZE, SIZE)).astype(np.int64)
        self.masks[:, :4] = 255  # some ignored pixels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(self.images[i], self.masks[i])


MODELS = {
    "resnet18+fcn+aux": lambda: create_model(backbone="resnet18", head="fcn", num_classes=3,
                                             backbone_weights=None, aux_loss=True),
    "mobilenet_v3_large+fpn+fpn": lambda: create_model(backbone="mobilenet_v3_large", neck="fpn", head="fpn",
                                                       num_classes=3, backbone_weights=None),
    "lraspp_mobilenet_v3_large": lambda: create_model("lraspp_mobilenet_v3_large", weights=None,
                                                      backbone_weights=None, num_classes=3),
}


def frozen(name: str = "resnet18+fcn+aux") -> nn.Module:
    torch.manual_seed(0)
    model = MODELS[name]()
    apply_freeze(model, "feature_extraction")
    return model


def dataset(model: nn.Module, n: int = 4, steps=()) -> Arrays:
    return Arrays(n, SegTransform(build_pipeline(list(steps)), model.info.preprocess))


def loss_of(out: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    loss = F.cross_entropy(out["out"], mask, ignore_index=255)
    return loss + 0.5 * F.cross_entropy(out["aux"], mask, ignore_index=255) if "aux" in out else loss


def build(model: nn.Module, data, **kwargs) -> FeatureCache:
    return FeatureCache.build(model, data, **{"progress": False, **kwargs})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_training_on_cache_equals_training_on_model(name):
    """Same batches, same dropout draws: losses, gradients and updated weights agree step by step."""
    cached_model = frozen(name)
    full_model = copy.deepcopy(cached_model)
    data = dataset(cached_model)
    cache = build(cached_model, data, batch_size=3)  # not the training batch size, on purpose
    features = CachedFeatureDataset(cache)
    optimizers = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
                  for m in (cached_model, full_model)]
    cached_model.train()
    full_model.train()
    step = 0
    for epoch in range(2):
        features.set_epoch(epoch)
        batches = zip(DataLoader(features, batch_size=2, collate_fn=collate_features),
                      DataLoader(data, batch_size=2, collate_fn=SegCollate()))
        for (feats, mask), (image, full_mask) in batches:
            assert torch.equal(mask, full_mask)
            torch.manual_seed(step)  # the heads' dropout
            cached_loss = loss_of(decode(cached_model, feats, mask.shape[-2:]), mask)
            torch.manual_seed(step)
            full_loss = loss_of(full_model(image), full_mask)
            torch.testing.assert_close(cached_loss, full_loss, rtol=1e-5, atol=1e-6)
            for opt, loss in zip(optimizers, (cached_loss, full_loss)):
                opt.zero_grad()
                loss.backward()
            for (n, a), b in zip(cached_model.named_parameters(), full_model.parameters()):
                assert (a.grad is None) == (b.grad is None), n
                if a.grad is not None:
                    torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=n)
            for opt in optimizers:
                opt.step()
            step += 1
    for (n, a), b in zip(cached_model.state_dict().items(), full_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=n)


def test_copies_are_distinct_seeded_augmentations_served_in_rotation():
    model = frozen()
    data = dataset(model, n=2, steps=RANDOM_STEPS)
    cache = build(model, data, copies=3, seed=7)
    assert (len(cache), cache.copies) == (2, 3)
    for i in range(2):
        masks = cache.masks[i]
        assert all(not torch.equal(masks[a], masks[b]) for a in range(3) for b in range(a + 1, 3))
        for k in range(3):
            # The documented contract: copy k of item i is the transform reseeded with item_seed(seed, k, i).
            data.transform.reseed(item_seed(7, k, i))
            assert torch.equal(data[i][1], masks[k].long())
            # ... which is what uncached training draws for item i at epoch k.
            uncached = EpochSeeded(data, seed=7)
            uncached.set_epoch(k)
            assert torch.equal(uncached[i][1], masks[k].long())
    features = CachedFeatureDataset(cache)
    for epoch in range(5):
        features.set_epoch(epoch)
        assert torch.equal(features[1][1], cache.masks[1][epoch % 3].long())
        assert torch.equal(features[1][0]["layer4"], cache.feats[1][epoch % 3]["layer4"])


def test_random_copy_mode_is_seeded():
    model = frozen()
    cache = build(model, dataset(model, n=3, steps=RANDOM_STEPS), copies=3)
    picks = []
    for _ in range(2):
        features = CachedFeatureDataset(cache, mode="random", seed=1)
        draws = []
        for epoch in range(6):
            features.set_epoch(epoch)
            draws.append([features.copy_of(i) for i in range(3)])
        picks.append(draws)
    assert picks[0] == picks[1]
    assert len({c for row in picks[0] for c in row}) > 1
    with pytest.raises(ConfigError, match="rotate, random"):
        CachedFeatureDataset(cache, mode="cycle")


def test_cache_is_reproducible_across_batch_size_and_workers():
    model = frozen()
    data = dataset(model, n=3, steps=RANDOM_STEPS)
    first = build(model, data, copies=2, batch_size=4)
    again = build(model, data, copies=2, batch_size=1, workers=2)
    assert first.keys == again.keys == ["layer3", "layer4"]  # only what the FCN head and aux head read
    for i in range(3):
        for k in range(2):
            assert torch.equal(first.masks[i][k], again.masks[i][k])
            for key in first.keys:
                torch.testing.assert_close(first.feats[i][k][key], again.feats[i][k][key], rtol=1e-4, atol=1e-5)


def test_refuses_a_backbone_that_is_not_frozen():
    torch.manual_seed(0)
    model = MODELS["resnet18+fcn+aux"]()
    data = dataset(model, n=1)
    assert not can_cache(model)
    with pytest.raises(ConfigError, match="not wholly frozen .* freeze.strategy: feature_extraction"):
        build(model, data)
    apply_freeze(model, "partial", stages=4)  # layer4 still trains
    assert not can_cache(model)
    apply_freeze(model, "feature_extraction", bn=False)  # BatchNorm affine weights still train
    assert not can_cache(model)
    apply_freeze(model, "feature_extraction")
    assert can_cache(model)
    assert not can_cache(nn.Sequential(nn.Conv2d(3, 3, 1)))


def test_memory_limit_and_estimate():
    model = frozen()
    data = dataset(model, n=3)
    cache = build(model, data, copies=2, max_bytes=None)
    assert cache.nbytes == estimate_bytes(model, (SIZE, SIZE), 3, 2)
    half = build(model, data, copies=2, dtype="float16", max_bytes=None)
    assert half.nbytes == estimate_bytes(model, (SIZE, SIZE), 3, 2, dtype="float16") < cache.nbytes
    feats, mask = CachedFeatureDataset(half)[0]
    assert feats["layer4"].dtype == torch.float32 and mask.dtype == torch.int64
    assert cache.masks[0][0].dtype == torch.uint8  # labels and 255 fit in a byte
    # Refused from the first batch's size, before the rest is computed.
    with pytest.raises(ConfigError, match=r"3 images x 2 copies would take about .* over the .* cache.max_gb"):
        build(model, data, copies=2, max_bytes=cache.nbytes - 1, batch_size=1)
    with pytest.raises(ConfigError, match="cache.dtype"):
        build(model, data, dtype="int8")


def test_backbone_runs_in_eval_mode_and_statistics_stay():
    """A backbone frozen by hand, model in train mode: the cache uses running statistics and moves none."""
    torch.manual_seed(0)
    model = MODELS["resnet18+fcn+aux"]()
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    model.train()
    before = copy.deepcopy(model.backbone.state_dict())
    data = dataset(model, n=2)
    with pytest.warns(UserWarning, match="not held in eval mode"):
        cache = build(model, data, batch_size=1)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert all(m.training for m in model.modules())
    with eval_mode(model), torch.no_grad():
        expected = encode(model, data[1][0][None])
    assert torch.equal(cache.feats[1][0]["layer4"], expected["layer4"][0])  # batch size 1 both: same kernels


def test_collate_refuses_mixed_sizes_and_progress_is_shown(capsys):
    model = frozen("lraspp_mobilenet_v3_large")
    cache = FeatureCache.build(model, dataset(model, n=2))
    assert "caching backbone features" in capsys.readouterr().err
    assert cache.keys == ["low", "high"]
    small = FeatureCache.build(model, dataset(model, n=1, steps=RANDOM_STEPS), progress=False)
    with pytest.raises(ValueError, match="fixed augment.crop_size or batch size 1"):
        collate_features([CachedFeatureDataset(cache)[0], CachedFeatureDataset(small)[0]])
