"""Acceptance of timm backbones end to end: a timm ConvNeXt and a timm ViT fine-tune 2 epochs from stand-in timm
weights (loaded by timm's own path from the Hugging Face cache) under a semantic-FPN head and under Faster R-CNN,
on tiny synthetic data at tiny sizes; the transfer report says every backbone tensor loaded (a ViT's simple
feature pyramid is new), and ``infer --checkpoint`` predicts with the result."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from synthetic import detection as synthetic_boxes
from synthetic import segmentation as synthetic

from seg_transfer.cli import main
from seg_transfer.models.checkpoint import read_checkpoint

pytest.importorskip("timm")
pytestmark = pytest.mark.usefixtures("one_thread")

# One ConvNeXt and one ViT; the ViT's detection run is the slowest (~20 s on 2 cores): slow.
RUNS = [("convnext_atto", "segmentation"), ("convnext_atto", "detection"), ("vit_tiny_patch16_224", "segmentation"),
        pytest.param("vit_tiny_patch16_224", "detection", marks=pytest.mark.slow)]


def _config(task: str, arch: str, root, out) -> dict:
    model = {"backbone": f"timm/{arch}", "neck": "fpn", "backbone_weights": "DEFAULT", "resize": 0}
    if task == "segmentation":
        data = synthetic.make_dataset(root, n=10)
        return synthetic.config(data, out, model={**model, "head": "fpn"}, train={"batch_size": 4})
    data = synthetic_boxes.make_voc_boxes(root, n=8, size=64)
    return synthetic_boxes.config(data, out, {**model, "head": "fasterrcnn", "resize": 64},
                                  train={"batch_size": 4, "lr": 0.005})


@pytest.mark.parametrize("arch, task", RUNS)
def test_finetunes_two_epochs_and_infers(arch, task, timm_standin, tmp_path, capsys):
    timm_standin(arch)
    cfg = _config(task, arch, tmp_path / "data", tmp_path / "runs")
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["finetune", str(tmp_path / "cfg.yaml"), "-q"]) == 0
    run = tmp_path / "runs" / "run"
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 2  # header + 2 epochs

    report = json.loads((run / "transfer_report.json").read_text())
    assert report["counts"]["loaded"] > 0 and report["counts"]["skipped"] == 0
    assert "loaded whole when the model was built" in report["source"]
    parts = report["by_part"]
    assert list(parts) == ["stem", "layer1", "layer2", "layer3", "layer4"] and all(c["loaded"] for c in parts.values())
    if arch.startswith("vit"):  # only the pyramid's new layers (riding with layer4), none of timm's tensors
        assert report["missing"] and all(".pyramid." in n for n in report["missing"])
        assert sum(c["missing"] for c in parts.values()) == parts["layer4"]["missing"]
    else:
        assert report["missing"] == []

    assert read_checkpoint(run / "best.pt")["model"]["backbone"] == f"timm/{arch}"
    image = sorted(p for p in (tmp_path / "data").rglob("*.png") if "mask" not in p.parent.name.lower())[0]
    out = tmp_path / "pred"
    assert main(["infer", "--checkpoint", str(run / "best.pt"), str(image), "--out", str(out), "--json", "-q"]) == 0
    if task == "segmentation":
        mask = np.asarray(Image.open(out / f"{image.stem}_mask.png"))
        assert mask.shape == (64, 64) and mask.max() < len(synthetic.CLASSES)
    else:
        result = json.loads((out / f"{image.stem}.json").read_text())  # two epochs: few boxes pass the threshold
        assert (out / f"{image.stem}_boxes.png").is_file()
        assert (result["height"], result["width"]) == (64, 64) and isinstance(result["detections"], list)
