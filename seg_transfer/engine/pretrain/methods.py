"""The self-supervised methods (``pretrain.method``): name -> builder of the module that turns two views'
backbone features into a loss. The losses are written here rather than taken from lightly: each is a few
lines, and lightly pulls in pytorch_lightning and hydra-core for them.

- ``simclr`` (Chen et al. 2020): an MLP projector on the pooled last stage; NT-Xent, every other image of
  the batch (both views) a negative.
- ``vicreg`` (Bardes et al. 2022): the same projector; invariance (MSE between views) + variance (a hinge
  on each dimension's std) + covariance (off-diagonal terms): no negatives, so small batches work.
- ``pixcontrast`` (Xie et al. 2021, the PixPro paper's pixel-contrast baseline, with DenseCL's mix of a
  global term): a 1x1-conv projector on the last stage's map; a cell of view 1 and a cell of view 2 whose
  centres see source points closer than ``DENSE_THRESHOLD`` cell sides are positives, every other cell of
  the batch a negative; plus ``simclr``'s image-level term, weighted ``1 - dense_weight``.

Under torchrun each process contrasts its own batch (no gather of negatives across processes).
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...config import PretrainConfig
from ...models.stages import OUT_STAGES

LAST = OUT_STAGES[-1]
DENSE_THRESHOLD = 0.7  # PixPro's: positives are cells closer than 0.7 of a cell's side in the source image
VICREG_WEIGHTS = (25.0, 25.0, 1.0)  # invariance, variance, covariance: the paper's
Feats = Mapping[str, torch.Tensor]  # a backbone's stage features by name



def mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """SimCLR's projector: linear -> BatchNorm -> ReLU -> linear."""
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out))


def conv_mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """The same projector applied to every cell of a feature map (1x1 convolutions)."""
    return nn.Sequential(nn.Conv2d(in_dim, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                         nn.Conv2d(hidden, out, 1))


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss: each of the 2N embeddings must pick its other view among the 2N - 1 others."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    n = len(z1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, targets)


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """VICReg's invariance + variance + covariance terms with the paper's weights."""
    z1, z2 = z1.float(), z2.float()
    invariance = F.mse_loss(z1, z2)
    variance = covariance = z1.new_zeros(())
    n, d = z1.shape
    for z in (z1, z2):
        z = z - z.mean(0)
        variance = variance + F.relu(1 - torch.sqrt(z.var(0) + 1e-4)).mean() / 2
        cov = (z.T @ z) / max(n - 1, 1)
        covariance = covariance + (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d
    a, b, c = VICREG_WEIGHTS
    return a * invariance + b * variance + c * covariance


def pixel_contrast(d1: torch.Tensor, d2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """Dense InfoNCE from view 1's cells to view 2's: ``d``: N x D x G x G projections, ``p``: N x G x G x 3
    source points (``views.cell_points``). A cell's positives: view 2's cells of the same image within
    ``DENSE_THRESHOLD`` of its side; the loss is -log(sum over positives / sum over all cells of the batch),
    averaged over the cells that have a positive (0 when none has)."""
    n, dim = d1.shape[:2]
    q = F.normalize(d1.float().flatten(2).transpose(1, 2).reshape(-1, dim), dim=1)  # (N G G) x D
    k = F.normalize(d2.float().flatten(2).transpose(1, 2).reshape(-1, dim), dim=1)
    a, b = p1.reshape(n, -1, 3), p2.reshape(n, -1, 3)
    dist = torch.cdist(a[..., :2], b[..., :2])  # N x GG x GG, same image only
    near = dist < DENSE_THRESHOLD * a[..., 2:3]
    cells = a.shape[1]
    positive = torch.zeros(n * cells, n * cells, dtype=torch.bool, device=q.device)
    for i in range(n):  # block-diagonal: positives pair cells of the same image
        positive[i * cells:(i + 1) * cells, i * cells:(i + 1) * cells] = near[i]
    has = positive.any(1)
    if not bool(has.any()):
        return q.sum() * 0
    logits = q[has] @ k.T / temperature
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    pos = positive[has]
    return -(torch.logsumexp(log_prob.masked_fill(~pos, float("-inf")), dim=1)).mean()


def pooled(feats: Feats) -> torch.Tensor:
    return feats[LAST].float().mean((2, 3))


class SSLMethod(nn.Module):
    """Two views' backbone features (and their cells' source points) -> {"loss": total, parts...}."""

    def forward(self, f1: Feats, f2: Feats, p1: torch.Tensor, p2: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class SimCLR(SSLMethod):
    def __init__(self, channels: int, cfg: PretrainConfig) -> None:
        super().__init__()
        self.projector = mlp(channels, cfg.hidden_dim, cfg.projection_dim)
        self.temperature = cfg.temperature

    def forward(self, f1: Feats, f2: Feats, p1: torch.Tensor, p2: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = nt_xent(self.projector(pooled(f1)), self.projector(pooled(f2)), self.temperature)
        return {"loss": loss}


class VICReg(SSLMethod):
    def __init__(self, channels: int, cfg: PretrainConfig) -> None:
        super().__init__()
        self.projector = mlp(channels, cfg.hidden_dim, cfg.projection_dim)

    def forward(self, f1: Feats, f2: Feats, p1: torch.Tensor, p2: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": vicreg_loss(self.projector(pooled(f1)), self.projector(pooled(f2)))}


class PixContrast(SSLMethod):
    def __init__(self, channels: int, cfg: PretrainConfig) -> None:
        super().__init__()
        self.projector = mlp(channels, cfg.hidden_dim, cfg.projection_dim)
        self.dense = conv_mlp(channels, cfg.hidden_dim, cfg.projection_dim)
        self.temperature, self.weight = cfg.temperature, cfg.dense_weight

    def forward(self, f1: Feats, f2: Feats, p1: torch.Tensor, p2: torch.Tensor) -> dict[str, torch.Tensor]:
        image = nt_xent(self.projector(pooled(f1)), self.projector(pooled(f2)), self.temperature)
        d1, d2 = self.dense(f1[LAST].float()), self.dense(f2[LAST].float())
        dense = (pixel_contrast(d1, d2, p1, p2, self.temperature) + pixel_contrast(d2, d1, p2, p1, self.temperature)) / 2
        return {"loss": (1 - self.weight) * image + self.weight * dense, "image_loss": image, "dense_loss": dense}


# Every builder takes the last stage's channel count and the pretrain block.
METHODS: dict[str, Callable[[int, PretrainConfig], SSLMethod]] = {
    "simclr": SimCLR,
    "vicreg": VICReg,
    "pixcontrast": PixContrast,
}


class SSLModel(nn.Module):
    """The backbone and the method's heads as one module (what DDP wraps): two views -> the losses."""

    def __init__(self, backbone: nn.Module, method: SSLMethod) -> None:
        super().__init__()
        self.backbone, self.method = backbone, method

    def forward(self, v1: torch.Tensor, v2: torch.Tensor, p1: torch.Tensor, p2: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.method(self.backbone(v1), self.backbone(v2), p1, p2)
