"""Problems and DataError (``data.problems``): raise the first or collect them all; one line out of a worker."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic.folders import FLAT, H, W, folder, make_folder, save

from seg_transfer.data import DataError
from seg_transfer.data.problems import Problem, collecting, fail, report


@pytest.fixture
def root(tmp_path):
    make_folder(tmp_path, FLAT)
    return tmp_path


def test_report_raises_the_first_problem_naming_how_many_more():
    problems = [Problem("missing_mask", "a.png", "a: missing"), Problem("missing_mask", "b.png", "b: missing")]
    report([])  # nothing to say: no error
    with pytest.raises(DataError) as info:
        report(problems)
    assert str(info.value) == "a: missing (and 1 more; the data check, --check-data, lists them all)"
    assert info.value.problem == problems[0]
    assert str(fail(problems[1])) == "b: missing"


def test_collecting_records_every_problem_instead_of_raising():
    problems = [Problem("bad_list", "x.txt", "x"), Problem("empty_split", "root", "y", "warning")]
    with collecting() as found:
        report(problems[:1])
        report(problems[1:])
    assert found == problems
    with pytest.raises(DataError):  # outside the block, raising again
        report(problems)


def test_a_bad_mask_in_a_dataloader_worker_surfaces_as_a_one_line_data_error(root):
    save(root / "masks" / "f0.png", np.full((H, W, 3), (1, 2, 3), np.uint8))
    data = folder(root)
    ds = data.train if "f0" in data.train.names else data.val
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=lambda b: b)
    with pytest.raises(DataError) as info:
        list(loader)
    assert str(info.value).startswith(f"mask {root / 'masks' / 'f0.png'} is RGB (3 channels)")
    assert "\n" not in str(info.value)
