"""torchrun on this CPU machine (gloo, 2 processes on localhost): shards, DDP equivalence with one process
at the global batch, exact distributed evaluation, and a failing rank ending the job.

Equivalence holds to float rounding only where the trainable part of the model has no BatchNorm in
training mode (BatchNorm's batch statistics over B images differ from those over 2B) and where each
process's loss normaliser is its share of the one-process normaliser, so the models below freeze their
backbones (BatchNorm held in eval) and train GroupNorm or norm-free heads, or have no BatchNorm at all."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from synthetic.classification import make_classes
from synthetic.detection import voc_tree, voc_xml
from synthetic.segmentation import config as seg_config
from synthetic.segmentation import make_dataset
from torch.utils.data import DataLoader

from seg_transfer import create_model
from seg_transfer.config import Config, from_dict
from seg_transfer.data.registry import build_dataset
from seg_transfer.engine.distributed import ShardSampler, unshard
from seg_transfer.engine.trainer import LR_SCALING, Trainer
from seg_transfer.errors import ConfigError
from seg_transfer.models.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[2]
FINETUNE = str(REPO / "tools" / "finetune.py")


# ------------------------------------------------------------------------------------------ shards
@pytest.mark.parametrize("n, seed, epoch", [(23, 0, 0), (23, 0, 3), (8, 5, 1)])
def test_one_process_order_is_the_dataloaders(n, seed, epoch):
    """One process keeps the order ``DataLoader(shuffle=True)`` drew before shards existed."""
    generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    before = [int(i) for batch in DataLoader(list(range(n)), batch_size=4, shuffle=True, generator=generator)
              for i in batch]
    assert list(ShardSampler(n, shuffle=True, seed=seed, epoch=epoch)) == before


@pytest.mark.parametrize("world", [2, 3])
def test_rank_batches_together_are_the_one_process_batch(world):
    n, b = 24, 2
    one = list(ShardSampler(n, shuffle=True, seed=1, epoch=2))
    shards = [list(ShardSampler(n, shuffle=True, seed=1, epoch=2, rank=r, world=world)) for r in range(world)]
    for k in range(n // (b * world)):
        together = sorted(i for shard in shards for i in shard[k * b:(k + 1) * b])
        assert together == sorted(one[k * b * world:(k + 1) * b * world])


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (2, 4)])
def test_eval_shards_cover_every_item_once(n, world):
    shards = [list(ShardSampler(n, shuffle=False, rank=r, world=world, pad=False)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(s) for s in shards] == [len(ShardSampler(n, shuffle=False, rank=r, world=world, pad=False))
                                        for r in range(world)]


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (1, 2)])
def test_unshard_restores_the_dataset_order(n, world):
    shards = [list(ShardSampler(n, shuffle=False, rank=r, world=world, pad=False)) for r in range(world)]
    assert unshard(shards) == list(range(n))


def test_train_shards_are_padded_to_equal_length():
    shards = [list(ShardSampler(7, shuffle=True, rank=r, world=2)) for r in range(2)]
    assert [len(s) for s in shards] == [4, 4] and set(shards[0]) | set(shards[1]) == set(range(7))


def test_lr_scaling_rules():
    assert [LR_SCALING[k](4) for k in ("none", "linear", "sqrt")] == [1.0, 4.0, 2.0]
    with pytest.raises(ConfigError, match="train.lr_scaling"):
        from_dict(Config, {"train": {"lr_scaling": "quadratic"}})


# ------------------------------------------------------------------------------------------ torchrun
def torchrun(script: str, *args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                           str(nproc), script, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def write_config(path: Path, cfg: dict) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", map_location="cpu", weights_only=True)["state_dict"]


EQUIVALENCE = {
    # ResNet-18 frozen (BatchNorm held in eval), FPN neck + semantic-FPN head (GroupNorm): no batch statistics
    "segmentation": lambda tmp: seg_config(
        make_dataset(tmp / "seg", n=20, size=48), tmp / "runs",
        model={"neck": "fpn", "head": "fpn"}, augment={"crop_size": 48},
        freeze={"strategy": "feature_extraction"}, cache={"enabled": False},
        train={"epochs": 2, "batch_size": 4, "optimizer": "sgd", "lr": 0.05, "scheduler": "poly"},
        output={"num_predictions": 0}),
    # ResNet-18 frozen, linear classifier head; random flips: augmentation seeds follow the item, not the rank
    "classification": lambda tmp: classification_config(tmp),
    # the same with gradient accumulation: 2 micro-batches of 2 per process and step (DDP's no_sync)
    "classification_accumulate": lambda tmp: classification_config(tmp, batch_size=2, accumulate=2),
    "detection": lambda tmp: detection_config(tmp),
}


# SSD's hard negative mining sorts each image's background losses; convolutions over a batch of 2 and of 4
# round differently (~1e-7), which can reorder near-tied negatives and so pick a few others: measured 1.4e-5.
TOLERANCE = {"detection": 1e-4}


def detection_config(tmp: Path) -> dict:
    """SSD300-VGG16 (no BatchNorm anywhere; hard negative mining, no random sampling as in R-CNN).
    SSD divides each batch's loss by its number of matched anchors: every image has the same two boxes and
    no augmentation moves them, so each process's count is half the one-process count and the losses agree.
    (Faster R-CNN samples proposals with the global RNG, a different stream per process: not comparable.)"""
    boxes = {f"img{i}": voc_xml([("cat", (4, 5, 30, 28)), ("dog", (30, 10, 55, 36))]) for i in range(5)}
    root = voc_tree(tmp / "det", boxes, train=[f"img{i}" for i in range(4)], val=["img4"])
    # SSD300's extra layers need its 300-pixel input: the smallest that runs
    return {"model": {"name": "ssd300_vgg16", "weights": None, "backbone_weights": None},
            "data": {"format": "voc_boxes", "root": str(root), "classes": ["cat", "dog"]},
            "augment": {"train": [], "val": []},
            "train": {"epochs": 2, "batch_size": 2, "val_batch_size": 1, "optimizer": "sgd", "lr": 0.001,
                      "scheduler": "none", "amp": "off", "device": "cpu"},
            "output": {"dir": str(tmp / "runs"), "name": "run", "num_predictions": 0}}


def classification_config(tmp: Path, **train) -> dict:
    return {
        "model": {"backbone": "resnet18", "head": "classifier", "backbone_weights": None, "resize": 0},
        "data": {"format": "imagefolder", "root": str(make_classes(tmp / "cls", n=20, size=32)),
                 "val_ratio": 0.2, "seed": 0},
        "augment": {"train": [{"name": "HorizontalFlip", "p": 0.5}], "val": []},
        "freeze": {"strategy": "feature_extraction"}, "cache": {"enabled": False},
        "train": {"epochs": 2, "batch_size": 4, "val_batch_size": 3, "optimizer": "sgd", "lr": 0.05,
                  "scheduler": "none", "amp": "off", "device": "cpu", **train},
        "output": {"dir": str(tmp / "runs"), "name": "run", "num_predictions": 0}}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(EQUIVALENCE))
def test_two_processes_match_one_at_double_batch(task, tmp_path, one_thread):
    """2 processes at batch B reach the weights of 1 process at batch 2B (same order, same augmentation).
    Tolerance 1e-5 of each tensor's scale (at least 1): DDP averages the two ranks' mean gradients where one
    process takes one mean over 2B items, so only float32 summation order differs (about 1e-7 per step)."""
    cfg = EQUIVALENCE[task](tmp_path)
    double = json.loads(json.dumps(cfg))
    double["train"]["batch_size"] *= 2 * double["train"].pop("accumulate", 1)
    double["output"]["name"] = "one"
    trainer = Trainer(from_dict(Config, double), progress=False, log=lambda _msg: None)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    one = trainer.fit()
    proc = torchrun(FINETUNE, write_config(tmp_path / "two.yaml", cfg), "output.name=two", "-q")
    assert proc.returncode == 0, proc.stderr[-3000:]
    batch, accumulate = cfg["train"]["batch_size"], cfg["train"].get("accumulate", 1)
    assert f"distributed: 2 processes (gloo); batch {batch} per process x 2 x accumulate {accumulate}" in proc.stdout
    a, b = weights(one.run_dir), weights(tmp_path / "runs" / "two")
    floats = [k for k in a if a[k].is_floating_point()]
    # training moved the head: the comparison is not between two untouched models
    assert max(float((a[k] - start[k]).abs().max()) for k in floats) > 1e-4
    # relative to each tensor's scale: SSD's L2-norm scale weights sit near 20, where float32 spacing is 2e-6
    gaps = {k: float((a[k] - b[k]).abs().max()) / max(1.0, float(a[k].abs().max())) for k in floats}
    worst = max(gaps, key=gaps.__getitem__)
    print(f"{task}: largest weight difference, 2 processes x {batch} x accumulate {accumulate} vs 1 x "
          f"{double['train']['batch_size']}: {gaps[worst]:.2e} ({worst})")
    assert gaps[worst] <= TOLERANCE.get(task, 1e-5), (worst, gaps[worst])


EVAL_SCRIPT = '''
import json, sys
import torch
from seg_transfer.config import load_config
from seg_transfer.engine import distributed as D
from seg_transfer.engine.evaluate import evaluate, plain_metrics
from seg_transfer.engine.tasks import build_task
from seg_transfer.data.registry import build_dataset
from seg_transfer.models.checkpoint import load_checkpoint

out = {}
D.setup(torch.device("cpu"))
for name, cfg_path, ckpt in json.loads(sys.argv[1]):
    cfg = load_config(cfg_path)
    model = load_checkpoint(ckpt)
    splits = build_dataset(cfg.data)
    task = build_task(model.info.task, cfg, splits)
    dataset = splits.val.with_transform(task.transforms(cfg.augment, model.info.preprocess)[1])
    loss, metrics, meter = evaluate(model, dataset, task, torch.device("cpu"), cfg.train.val_batch_size)
    # image_scores: gathered back into dataset order (the report's best and worst images)
    out[name] = {"loss": loss, "images": len(dataset), "image_scores": meter.image_scores(), **plain_metrics(metrics)}
if D.is_main():
    json.dump(out, open(sys.argv[2], "w"))
D.teardown()
'''


@pytest.mark.slow
def test_distributed_evaluation_equals_one_process(tmp_path, one_thread):
    """A checkpoint scored by 2 ranks (val splits of odd size: 3, 5 and 5 items) gives exactly the one-process
    mIoU / AP / accuracy: each item is scored once and the meters are summed, not averaged."""

    seg = seg_config(make_dataset(tmp_path / "seg", n=15, size=48), tmp_path / "runs",
                     model={"head": "fcn"}, train={"val_batch_size": 2})
    cls_root = make_classes(tmp_path / "cls", n=12, size=32)
    extra = sorted((cls_root / "vertical").iterdir())[0]
    shutil.copy(extra, cls_root / "vertical" / "extra.png")  # 13 images: a val split of 5
    cls = {"model": {"backbone": "resnet18", "head": "classifier", "backbone_weights": None, "resize": 0},
           "data": {"format": "imagefolder", "root": str(cls_root),
                    "val_ratio": 0.2, "seed": 0},
           "augment": {"val": []}, "train": {"val_batch_size": 2}}
    boxes = {f"img{i}": voc_xml([("cat", (4 + i, 5, 30, 28)), ("dog", (30, 10, 55, 36))]) for i in range(8)}
    det_root = voc_tree(tmp_path / "det", boxes, train=[f"img{i}" for i in range(3)],
                        val=[f"img{i}" for i in range(3, 8)])
    det = {"model": {"name": "fasterrcnn_mobilenet_v3_large_320_fpn", "weights": None, "backbone_weights": None},
           "data": {"format": "voc_boxes", "root": str(det_root), "classes": ["cat", "dog"]},
           "train": {"val_batch_size": 2}}
    jobs = []
    for name, cfg in (("segmentation", seg), ("classification", cls), ("detection", det)):
        path = write_config(tmp_path / f"{name}.yaml", cfg)
        config = from_dict(Config, cfg)
        classes = build_dataset(config.data).classes
        torch.manual_seed(0)
        model = create_model(**{**cfg["model"], "classes": list(classes)}).eval()
        if name == "detection":  # random R-CNN heads: keep low scores so AP is not trivially 0
            model.roi_heads.score_thresh = 0.0
        jobs.append((name, path, str(save_checkpoint(tmp_path / f"{name}.pt", model))))
    script = tmp_path / "dist_eval.py"
    script.write_text(EVAL_SCRIPT)
    one = torchrun(str(script), json.dumps(jobs), str(tmp_path / "one.json"), nproc=1)
    two = torchrun(str(script), json.dumps(jobs), str(tmp_path / "two.json"), nproc=2)
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-2000:], two.stderr[-2000:])
    a, b = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert [a[t]["images"] for t in ("segmentation", "classification", "detection")] == [3, 5, 5]
    assert [len(a[t]["image_scores"]) for t in ("segmentation", "classification", "detection")] == [3, 5, 5]
    assert a["detection"]["loss"] > 0  # the detectors' val loss (train mode, nothing updated), as one process
    for task in a:
        for key, value in a[task].items():
            if key in ("loss", "image_scores"):
                assert b[task][key] == pytest.approx(value, rel=1e-6, nan_ok=True), task
            else:
                assert b[task][key] == value or (value != value and b[task][key] != b[task][key]), (task, key)


FAIL_SCRIPT = '''
import os, sys
from seg_transfer.cli import main
# rank 1 gets a config that does not exist; rank 0 a good one, and then waits for rank 1 in the process group
sys.exit(main(["finetune", sys.argv[1] if os.environ["RANK"] == "0" else "/nonexistent/run.yaml", "-q"]))
'''


@pytest.mark.slow
def test_a_failing_rank_ends_the_job_with_one_line(tmp_path):
    cfg = seg_config(make_dataset(tmp_path / "seg", n=6, size=32), tmp_path / "runs",
                     train={"epochs": 50}, output={"num_predictions": 0})
    script = tmp_path / "fail.py"
    script.write_text(FAIL_SCRIPT)
    start = time.perf_counter()
    proc = torchrun(str(script), write_config(tmp_path / "ok.yaml", cfg), timeout=120)
    took = time.perf_counter() - start
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("seg-transfer: error:")]
    assert lines == ["seg-transfer: error: rank 1: /nonexistent/run.yaml: no such config file"], proc.stderr[-2000:]
    assert took < 60, took


def kill_all(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker`` (the launcher and its workers)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker in cmdline.read_bytes().decode(errors="replace"):
                os.kill(int(cmdline.parent.name), signal.SIGKILL)
        except (OSError, ValueError):  # the process ended meanwhile
            continue


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_weights(tmp_path):
    """2 processes SIGKILLed mid-run (the whole torchrun group) resume from last.pt under torchrun and end
    with the weights of an uninterrupted 2-process run: samplers, augmentation and dropout seeds are
    functions of (seed, epoch, item, rank), and the optimizer and schedule state travel in last.pt."""
    cfg = EQUIVALENCE["segmentation"](tmp_path)
    cfg["train"].update(epochs=4)
    path = write_config(tmp_path / "run.yaml", cfg)
    whole = torchrun(FINETUNE, path, "output.name=whole", "-q")
    assert whole.returncode == 0, whole.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "runs" / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             FINETUNE, path, "output.name=killed", "-q"], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (run / "last.pt").is_file() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    alive = proc.poll() is None
    kill_all("output.name=killed")  # torchrun's workers run in sessions of their own: every process of the run
    proc.wait()
    assert alive, "the run ended before it could be killed"
    epoch = torch.load(run / "last.pt", weights_only=True)["epoch"]
    assert epoch < 4
    resumed = torchrun(FINETUNE, "--resume", str(run), "-q")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {run / 'last.pt'} at epoch {epoch}" in resumed.stdout
    a, b = weights(tmp_path / "runs" / "whole"), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a), max(float((a[k] - b[k]).abs().max()) for k in a)
