"""The decoded-image cache (``data.memory``): what it returns is what the files hold (resized as the
pipeline's first step resizes them), its size is known before it is built, and a cap refuses it."""
from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from synthetic.folders import FLAT, H, W, folder, make_folder

from seg_transfer.data import memory
from seg_transfer.data.memory import DecodedDataset, auto_images, estimate_bytes, start_size
from seg_transfer.errors import ConfigError


@pytest.fixture
def splits(tmp_path):
    make_folder(tmp_path, FLAT)
    return folder(tmp_path)


def quiet(_message: str) -> None:
    pass


def test_the_cache_returns_what_the_disk_holds(splits):
    cache = DecodedDataset(splits.train, progress=False, log=quiet)
    assert len(cache) == len(splits.train) and cache.nbytes == estimate_bytes(splits.train) == 3 * H * W * 4
    for i in range(len(cache)):
        image, mask = splits.train.read(i)
        got_image, got_mask = cache.read(i)
        assert got_image.dtype == np.uint8 and (got_image == image).all()
        assert got_mask.dtype == np.int64 and (got_mask == mask).all()
    assert cache.pixels.is_shared()  # DataLoader workers read the same block


def test_resized_at_the_pipelines_starting_size(splits):
    cache = DecodedDataset(splits.train, shorter=20, progress=False, log=quiet)
    step = A.SmallestMaxSize(max_size=20)
    image, mask = splits.train.read(0)
    want = step(image=image, mask=mask)
    got_image, got_mask = cache.read(0)
    assert got_image.shape[:2] == start_size(H, W, 20) == want["image"].shape[:2]
    assert (got_image == want["image"]).all() and (got_mask == want["mask"]).all()


def test_a_cache_over_its_cap_is_refused_before_decoding(splits, monkeypatch):
    monkeypatch.setattr(type(splits.train), "read", lambda *a: pytest.fail("decoded before the size check"))
    with pytest.raises(ConfigError, match=r"cache.max_gb"):
        DecodedDataset(splits.train, max_gb=1e-9, progress=False, log=quiet)


def test_canvas_pads_a_batch_of_items(splits):
    cache = DecodedDataset(splits.train, progress=False, log=quiet)
    canvas = cache.canvas([2, 0])
    assert canvas.images.shape == (2, 3, H, W) and canvas.masks is not None
    image, mask = splits.train.read(2)
    assert (canvas.images[0].permute(1, 2, 0).numpy() == image).all()
    assert (canvas.masks[0].numpy() == mask).all() and canvas.sizes.tolist() == [[H, W], [H, W]]
    assert cache.to(torch.device("cpu")).canvas([1]).images.shape == (1, 3, H, W)


def test_auto_caches_only_what_fits(monkeypatch):
    """cache.images: auto: under cache.max_gb, half the free memory and (with loader processes) half of
    /dev/shm's free space; each refusal says which."""
    free = {None: 8 * 2**30, memory.SHM: 64 * 2**20}  # 8 GiB RAM free, a container's 64 MiB /dev/shm
    monkeypatch.setattr(memory, "free_bytes", lambda path=None: free[path])
    monkeypatch.setattr(memory.os.path, "isdir", lambda path: True)
    assert auto_images(100 * 2**20, 8.0, shared=False)[0] == "ram"
    mode, why = auto_images(100 * 2**20, 8.0, shared=True)
    assert mode == "none" and "/dev/shm" in why
    mode, why = auto_images(5 * 2**30, 8.0, shared=False)
    assert mode == "none" and "half the free memory" in why
    mode, why = auto_images(5 * 2**30, 2.0, shared=False)
    assert mode == "none" and "cache.max_gb (2)" in why


def test_a_shared_cache_larger_than_dev_shm_is_refused_in_one_line(splits, monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda path=None: 10)
    monkeypatch.setattr(memory.os.path, "isdir", lambda path: True)
    with pytest.raises(ConfigError, match=r"/dev/shm has 0 MiB free; set train.workers: 0"):
        DecodedDataset(splits.train, progress=False, log=quiet, shared=True)
    unshared = DecodedDataset(splits.train, progress=False, log=quiet, shared=False)  # read in-process only
    assert not unshared.pixels.is_shared() and (unshared.read(0)[0] == splits.train.read(0)[0]).all()


def _cache_in_a_process_group(rank: int, world: int, root: str, kind: str, out: str) -> None:
    """One process of a 2-process gloo group (as torchrun starts them): build the cache, record which items
    this process decoded and what the cache holds."""
    import json
    import os
    from pathlib import Path

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{root}/rendezvous", rank=rank, world_size=world)
    dataset = folder(Path(root)).train if kind == "masks" else _classes(Path(root) / "classes")
    decoded: list[int] = []
    read = dataset.read
    dataset.read = lambda i: (decoded.append(i), read(i))[1]  # type: ignore[method-assign]
    cache = DecodedDataset(dataset, progress=False, log=quiet, shared=False)
    dist.barrier()  # both have built it: nothing is written after this
    items = [cache.read(i) for i in range(len(cache))]
    record = {"decoded": decoded, "pixels": [image.tolist() for image, _ in items],
              "labels": [label.tolist() if kind == "masks" else label for _, label in items],
              "files_left": sorted(n for n in os.listdir(memory.SHM) if n.startswith("seg_transfer_")),
              "shared": cache.pixels.is_shared()}
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def _classes(root):
    from synthetic.classification import CLASSES, make_classes

    from seg_transfer.data.classification import ImageFolderDataset

    if not root.is_dir():
        make_classes(root, n=3, size=12)
    files = sorted(root.rglob("*.png"))
    return ImageFolderDataset(files, [CLASSES.index(p.parent.name) for p in files], CLASSES, root)


@pytest.mark.parametrize("kind", ["masks", "labels"])
def test_under_torchrun_a_machine_holds_one_copy_each_process_decoding_its_share(splits, tmp_path, kind):
    """Issue 24: the processes of one machine decode every other item each into one block all of them map;
    what each process then reads is what the files hold, and no file is left in /dev/shm."""
    import json
    import os

    import torch.multiprocessing as mp

    if kind == "labels":
        _classes(tmp_path / "classes")
    before = {n for n in os.listdir(memory.SHM) if n.startswith("seg_transfer_")}
    mp.spawn(_cache_in_a_process_group, args=(2, str(tmp_path), kind, str(tmp_path)), nprocs=2)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    single = DecodedDataset(splits.train if kind == "masks" else _classes(tmp_path / "classes"), progress=False,
                            log=quiet)
    want = [single.read(i) for i in range(len(single))]
    assert sorted(ranks[0]["decoded"] + ranks[1]["decoded"]) == list(range(len(single)))  # each item once
    assert not set(ranks[0]["decoded"]) & set(ranks[1]["decoded"])
    for record in ranks:
        assert record["pixels"] == [image.tolist() for image, _ in want]
        assert record["labels"] == [label.tolist() if kind == "masks" else label for _, label in want]
        assert record["shared"]  # loader workers read the node's block in place
        assert set(record["files_left"]) <= before  # the files are gone once every process holds its mapping
