"""``VisualizationDetector``: the natural-vs-visualization classifier of
`dont-trust-your-eyes…` App. C.1 (Table 3) as a LightningModule.

Label 1 = natural image, 0 = feature visualization (any optimization step). Trained with
SGD, lr 0.01, momentum 0.9, weight decay 5e-5 (C.1); accuracy is logged overall and
separately on natural inputs and on visualizations (torchmetrics), like the paper's
"99.49 % (99.66 % natural, 99.31 % visualizations)". The network is
:class:`lightning_fv.manipulation.DetectorCNN`; its linear layer takes 144 features at
224 px and 16 at 64 px (see :mod:`lightning_fv.manipulation.detector_net`).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor

from lightning_fv.manipulation.detector_net import DetectorCNN, load_detector, save_detector


class VisualizationDetector(L.LightningModule):
    """Binary detector ``E`` of the fooling circuit.

    Args:
        image_size: side of the square ``(B, 3, H, W)`` inputs (fixes the flatten size).
        lr, momentum, weight_decay: SGD (App. C.1 defaults).
        max_epochs: for the cosine schedule (C.1 trains 8 epochs; ``0`` = constant lr).
    """

    def __init__(self, image_size: int = 224, lr: float = 0.01, momentum: float = 0.9,
                 weight_decay: float = 5e-5, max_epochs: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = DetectorCNN(image_size)
        self.metrics = torch.nn.ModuleDict({
            f"{stage}_{kind}": torchmetrics.classification.BinaryAccuracy()
            for stage in ("train", "val", "test") for kind in ("acc", "natural", "vis")
        })

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B,)``; positive = natural."""
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.binary_cross_entropy_with_logits(logits, y.float())
        pred, target = (logits > 0).long(), y.long()
        nat = target == 1
        m = self.metrics
        m[f"{stage}_acc"].update(pred, target)
        if nat.any():
            m[f"{stage}_natural"].update(pred[nat], target[nat])
        if (~nat).any():
            m[f"{stage}_vis"].update(pred[~nat], target[~nat])
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, prog_bar=on_step, on_step=on_step, on_epoch=True,
                 sync_dist=not on_step)
        for kind, name in (("acc", "acc"), ("natural", "acc_natural"), ("vis", "acc_vis")):
            self.log(f"{stage}/{name}", m[f"{stage}_{kind}"], on_step=False, on_epoch=True,
                     prog_bar=(kind == "acc" and stage == "val"))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> object:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr,
                              momentum=self.hparams.momentum,
                              weight_decay=self.hparams.weight_decay)
        if not self.hparams.max_epochs:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_epochs)
        return {"optimizer": opt, "lr_scheduler": sched}

    def save_detector(self, path: str | Path) -> Path:
        """Save the bare :class:`DetectorCNN` weights (safetensors, image size in metadata)."""
        return save_detector(self.net, path)


__all__ = ["VisualizationDetector", "load_detector", "save_detector"]
