"""1 process vs 2 processes (torchrun, gloo) on this machine's 2 CPU cores, on CamVid frames.

Both sides use both cores: 1 process x 2 threads at batch 2B, and 2 processes x 1 thread at batch B
each (the same global batch, so the same number of optimizer steps and, by construction, the same
images in each step). Timed: the train epochs only (``Trainer.train_epoch``), on rank 0, after an
untimed warm-up epoch; the two sides alternate ``--repeats`` times and the table gives medians.
The model is a random-init MobileNetV3-Large backbone, frozen (BatchNorm held in eval), with an FPN neck
and the semantic-FPN head (GroupNorm): no BatchNorm trains, so the two sides must also end with the same
weights, and the table reports how close they are. A 2-core CPU has no spare compute for a second
process, so expect no speed-up: the point is the cost of DDP's gradient all-reduce and the equivalence.

    .venv/bin/python benchmarks/distributed.py                   # ~6 min on 2 quiet cores
    .venv/bin/python benchmarks/distributed.py --frames 16 --repeats 1 --epochs 1   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CAMVID = REPO.parent / "shared" / "data" / "CamVid"
CLASSES = ["sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian",
           "bicyclist"]


def config(out: Path, frames: int, batch: int, crop: int, epochs: int) -> dict:
    names = sorted(p.name for p in (CAMVID / "train").glob("0001TP_*.png"))[:frames + 2]
    (out / "train.txt").write_text("\n".join(names[:frames]) + "\n")
    (out / "val.txt").write_text("\n".join(names[frames:]) + "\n")  # never evaluated: only the list needs it
    return {
        "model": {"backbone": "mobilenet_v3_large", "neck": "fpn", "head": "fpn", "backbone_weights": None,
                  "resize": crop},
        "data": {"format": "folder", "root": str(CAMVID), "images": "train", "masks": "trainannot",
                 "classes": CLASSES, "split": "list",
                 # void (11) counted as sky: with ignored pixels, each process would average its loss over
                 # its own count of labelled pixels, and the two sides would differ by more than rounding
                 "label_map": {11: 0},
                 "train_list": str(out / "train.txt"), "val_list": str(out / "val.txt")},
        "augment": {"crop_size": crop, "train": [{"name": "HorizontalFlip", "p": 0.5}], "val": []},
        "freeze": {"strategy": "feature_extraction"}, "cache": {"enabled": False},
        "train": {"epochs": epochs, "batch_size": batch, "optimizer": "sgd", "lr": 0.002, "scheduler": "none",
                  "amp": "off", "device": "cpu", "workers": 0},
        "output": {"dir": str(out / "runs"), "name": "run", "num_predictions": 0},
    }


def worker(cfg_path: str, threads: int, result: str) -> None:
    """Runs under torchrun: train, time each epoch on every rank, rank 0 writes the figures."""
    import torch

    from seg_transfer.config import Config, from_dict
    from seg_transfer.engine import distributed as D
    from seg_transfer.engine.trainer import Trainer

    torch.set_num_threads(threads)
    cfg = from_dict(Config, yaml.safe_load(Path(cfg_path).read_text()))
    trainer = Trainer(cfg, progress=False, log=lambda _msg: None)
    seconds = []
    for epoch in range(cfg.train.epochs):
        start = time.perf_counter()
        trainer.train_epoch(epoch)
        if D.is_dist():
            torch.distributed.barrier()
        seconds.append(time.perf_counter() - start)
    if D.is_main():
        images = len(trainer.train_set)
        state = {k: v.tolist() for k, v in trainer.model.state_dict().items() if v.is_floating_point()
                 and "body." not in k}  # the trained neck and head
        Path(result).write_text(json.dumps({"seconds": seconds, "images": images, "state": state}))
    D.teardown()


def launch(cfg: dict, procs: int, threads: int, tmp: Path, tag: str) -> dict:
    path = tmp / f"{tag}.yaml"
    path.write_text(yaml.safe_dump(cfg))  # YAML keeps label_map's integer keys
    result = tmp / f"{tag}_result.json"
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
           __file__, "--worker", str(path), str(threads), str(result)]
    subprocess.run(cmd, check=True, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--batch", type=int, default=4, help="per process on the 2-process side (2x on the other)")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3, help="the first is a warm-up, not timed")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker[0], int(args.worker[1]), args.worker[2])
        return
    import torch

    sides = {"1 process x 2 threads, batch 2B": (1, 2, 2 * args.batch),
             "2 processes x 1 thread, batch B each": (2, 1, args.batch)}
    times: dict[str, list[float]] = {k: [] for k in sides}
    last: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        for r in range(args.repeats):
            for name, (procs, threads, batch) in sides.items():  # interleaved: drift hits both sides alike
                cfg = config(tmp, args.frames, batch, args.crop, args.epochs)
                cfg["output"]["name"] = f"run{r}_{procs}"
                out = launch(cfg, procs, threads, tmp, f"r{r}_p{procs}")
                timed = out["seconds"][1:] or out["seconds"]
                times[name].append(out["images"] / statistics.median(timed))
                last[name] = out
    a, b = (last[k]["state"] for k in sides)
    gap = max(float((torch.tensor(a[k]) - torch.tensor(b[k])).abs().max()) for k in a)
    scale = max(float(torch.tensor(a[k]).abs().max()) for k in a)
    base = statistics.median(times[next(iter(sides))])
    print(f"CamVid 0001TP, {args.frames} frames, crop {args.crop}, global batch {2 * args.batch}, "
          f"{args.epochs} epochs ({args.epochs - 1 or 1} timed), {args.repeats} repeats; machine: "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
    print("| side | train images/s (median) | runs | vs 1 process |")
    print("|---|---:|---|---:|")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.2f} | {', '.join(f'{v:.2f}' for v in values)} | {med / base:.2f}x |")
    print(f"largest difference of the trained neck/head weights after {args.epochs} epochs: {gap:.2e} "
          f"(largest weight {scale:.2f})")


if __name__ == "__main__":
    main()
