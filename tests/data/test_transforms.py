"""Pipelines from YAML lists (``data.transforms``): errors name the step, nested steps get the mask fill,
reseeding is reproducible per step."""
from __future__ import annotations

import numpy as np
import pytest
from synthetic.folders import pair

from seg_transfer.data import build_pipeline
from seg_transfer.data.transforms import all_steps, reseed
from seg_transfer.errors import ConfigError


@pytest.mark.parametrize("spec, message", [
    ([{"name": "HorizontalFilp"}], r"transforms\[0\]: unknown albumentations transform 'HorizontalFilp' "
                                   r"\(did you mean 'HorizontalFlip'\?\)"),
    ([{"name": "HorizontalFlip"}, {"name": "RandomScale", "scale_limt": 0.1}],
     r"transforms\[1\] \(RandomScale\): unknown argument 'scale_limt' \(did you mean 'scale_limit'\?\)"),
    ([{"name": "RandomCrop", "height": -1, "width": 8}], r"\(RandomCrop\): height: .*greater than or equal to 1"),
    ([{"name": "RandomCrop"}], r"\(RandomCrop\): height: required; width: required"),
    ([{"name": "Normalize"}], "Normalize does not belong in the pipeline"),
    (["HorizontalFlip"], "expected a mapping with a 'name'"),
    ({"name": "HorizontalFlip"}, "expected a list of transforms"),
    ([{"name": "OneOf", "transforms": [{"name": "Rotate", "border_mode": "constnt"}]}],
     r"transforms\[0\].transforms\[0\] \(Rotate\): border_mode 'constnt' \(did you mean 'constant'\?\)"),
])


def test_bad_pipelines_are_config_errors_naming_the_step(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_pipeline(spec)


def test_nested_compositions_get_the_mask_fill_too():
    pipeline = build_pipeline([{"name": "OneOf", "transforms": [{"name": "Rotate", "limit": 10}]}], 7)
    assert pipeline.transforms[0].transforms[0].fill_mask == 7


def test_reseed_reproduces_a_draw_and_seeds_each_step_on_its_own():
    crop = {"name": "RandomCrop", "height": 16, "width": 16}
    pipeline = build_pipeline([{"name": "OneOf", "p": 1.0, "transforms": [crop]}, {"name": "HorizontalFlip", "p": 0.5}])
    assert len(all_steps(pipeline)) == 4  # the compose, OneOf, its crop, the flip
    image, mask = pair(0)
    draws = []
    for seed in (3, 3, 4):
        reseed(pipeline, seed)
        draws.append([pipeline(image=image, mask=mask)["image"] for _ in range(3)])
    np.testing.assert_array_equal(np.stack(draws[0]), np.stack(draws[1]))
    assert not np.array_equal(np.stack(draws[0]), np.stack(draws[2]))
