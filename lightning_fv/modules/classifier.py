"""A plain image classifier LightningModule (the bundled model's trainer, and the
module the demo attaches the feature-visualization callbacks to)."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from lightning_fv.models import build_model


class ImageClassifier(L.LightningModule):
    """Cross-entropy training of any backbone on ``(B, 3, H, W)`` images in [0, 1].

    Args:
        model: a model name for :func:`lightning_fv.models.build_model` (``"small_cnn"``,
            ``"bundled"``, a torchvision/timm name) or an ``nn.Module``.
        num_classes: number of classes.
        lr, momentum, weight_decay: SGD with a cosine schedule over ``max_epochs``.
        checkpoint_path: optional local weights for a named model.
        label_smoothing: cross-entropy label smoothing.
    """

    def __init__(
        self,
        model: str | nn.Module = "small_cnn",
        num_classes: int = 10,
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        max_epochs: int = 10,
        checkpoint_path: str | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        self.model = (
            model if isinstance(model, nn.Module)
            else build_model(model, num_classes=num_classes, checkpoint_path=checkpoint_path)
        )
        self.train_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.val_acc = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        self.train_acc(logits, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", self.train_acc, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.val_acc(logits, y)
        self.log("val/loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val/acc", self.val_acc, prog_bar=True)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def configure_optimizers(self) -> dict[str, object]:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr,
                              momentum=self.hparams.momentum,
                              weight_decay=self.hparams.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.hparams.max_epochs)
        return {"optimizer": opt, "lr_scheduler": sched}
