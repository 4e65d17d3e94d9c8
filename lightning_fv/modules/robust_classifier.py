"""Adversarial training of any backbone (`robust-representations…` §3 Eq. 3, App. A.2–A.3).

:class:`RobustClassifier` trains ``min_θ E[max_{‖δ‖≤ε} L_θ(x + δ, y)]`` with a PGD
adversary from a random start (:func:`lightning_fv.adversarial.pgd`), logs clean and
robust accuracy for training and validation, and evaluates with a stronger adversary
(more steps, restarts) in ``test``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from lightning_fv.adversarial import PGDConfig, pgd, preset
from lightning_fv.models import build_model
from lightning_fv.utils.preprocess import (
    Normalize,
    NormalizedModel,
    check_mean_std,
    preprocessing_from,
)


def _has_own_normalization(model: nn.Module) -> bool:
    return any(isinstance(m, Normalize) for m in model.modules())


class RobustClassifier(L.LightningModule):
    """PGD adversarial training (App. A.3) of an image classifier on [0, 1] RGB inputs.

    Args:
        model: an ``nn.Module``, or a name for :func:`lightning_fv.models.build_model`
            (``"small_cnn"``, ``"bundled"``, ``"torchvision:resnet50"``, ``"timm:resnet18"``…).
        num_classes: number of classes (for named models and the metrics).
        mean, std: input normalization placed inside the model wrapper. If omitted, the
            backbone must normalize itself (contain a ``Normalize``, like ``SmallCNN``) or
            be a timm model whose ``pretrained_cfg`` states it; otherwise an error asks
            for them (e.g. ImageNet: ``[0.485, 0.456, 0.406]``, ``[0.229, 0.224, 0.225]``).
        pretrained: ask torchvision/timm for released weights (needs them cached locally).
        checkpoint_path: local weights for a named model (safetensors or weights-only).
        norm, eps, steps, step_size, random_start: the training adversary (pixel units;
            ``step_size=None`` is ``2.5·ε/steps``). ``eps=0`` or ``adversarial=False``
            trains on clean images (robust accuracy is still measured).
        preset: a :data:`lightning_fv.adversarial.PRESETS` name overriding
            ``norm/eps/steps/step_size`` (``"paper_training"`` is rescaled to
            ``input_shape`` when given).
        input_shape: ``(C, H, W)``, only used to rescale an ℓ2 paper preset.
        adversarial: train on adversarial examples (else standard training).
        eps_warmup_steps: ε (and the step size) ramp linearly from 0 over this many
            optimizer steps; 0 disables warm-up.
        val_attack: measure robust accuracy in validation with the training adversary.
        test_steps, test_restarts: the stronger test adversary (defaults
            ``max(20, 2·steps)`` steps, 3 restarts, step ``2.5·ε/steps``).
        train_clean_acc: also measure clean training accuracy (one extra eval-mode
            forward pass without gradients per batch).
        lr, momentum, weight_decay: SGD (App. A.2: momentum 0.9, weight decay 5e-4).
        lr_milestones: epochs at which the learning rate drops ×0.1 (Table 2); ``None``:
            cosine annealing over the trainer's ``max_epochs``.
    """

    def __init__(
        self,
        model: str | nn.Module = "small_cnn",
        num_classes: int = 10,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        norm: str = "l2",
        eps: float = 0.5,
        steps: int = 7,
        step_size: float | None = None,
        random_start: bool = True,
        preset: str | None = None,
        input_shape: Sequence[int] | None = None,
        adversarial: bool = True,
        eps_warmup_steps: int = 0,
        val_attack: bool = True,
        test_steps: int | None = None,
        test_restarts: int = 3,
        train_clean_acc: bool = True,
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        lr_milestones: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["model"] if isinstance(model, nn.Module) else None)
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if eps_warmup_steps < 0:
            raise ValueError(f"eps_warmup_steps must be >= 0, got {eps_warmup_steps}")
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if preset is not None:
            shape = tuple(input_shape) if input_shape is not None else None
            self.attack = _preset(preset, shape)
        else:
            self.attack = PGDConfig(norm, eps, steps, step_size, random_start)  # validates
        self.attack = replace(self.attack, random_start=random_start, restarts=1,
                              targeted=False)
        self.test_attack = self.attack.stronger(test_steps, test_restarts)
        self.model = NormalizedModel(*self._build(model, num_classes, mean, std, pretrained,
                                                  checkpoint_path))
        metric = lambda: torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)  # noqa: E731
        self.train_clean_acc, self.train_robust_acc = metric(), metric()
        self.val_clean_acc, self.val_robust_acc = metric(), metric()
        self.test_clean_acc, self.test_robust_acc = metric(), metric()

    @staticmethod
    def _build(model: str | nn.Module, num_classes: int, mean: Sequence[float] | None,
               std: Sequence[float] | None, pretrained: bool,
               checkpoint_path: str | None) -> tuple[nn.Module, nn.Module | None]:
        if isinstance(model, nn.Module):
            backbone = model
        elif isinstance(model, str):
            backbone = build_model(model, num_classes=num_classes, pretrained=pretrained,
                                   checkpoint_path=checkpoint_path)
        else:
            raise TypeError(f"model must be an nn.Module or a model name, got "
                            f"{type(model).__name__}")
        given = check_mean_std(mean, std)
        if given is not None:
            return backbone, Normalize(*given)
        if _has_own_normalization(backbone):
            return backbone, None
        try:
            m, s = preprocessing_from(backbone)
        except ValueError as err:
            raise ValueError(
                f"{type(backbone).__name__} does not normalize its input and states no "
                "mean/std; pass mean= and std= (ImageNet: [0.485, 0.456, 0.406], "
                "[0.229, 0.224, 0.225]; identity: [0, 0, 0], [1, 1, 1])"
            ) from err
        return backbone, Normalize(m, s)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, 3, H, W)`` in [0, 1]."""
        return self.model(x)

    # -- the adversary -------------------------------------------------------------------
    def current_eps_fraction(self) -> float:
        """ε warm-up factor in (0, 1] at the current optimizer step."""
        n = self.hparams.eps_warmup_steps
        if n <= 0:
            return 1.0
        return min(1.0, (self.global_step + 1) / n)

    def adversarial_examples(self, x: Tensor, y: Tensor, config: PGDConfig | None = None,
                             ) -> Tensor:
        """PGD examples for ``(x, y)``; usable in training, validation and test steps (also
        under ``torch.inference_mode``: inputs are copied out of it and gradients enabled)."""
        cfg = config or self.attack
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone() if x.is_inference() else x.detach()
            y = y.clone() if y.is_inference() else y
            return pgd(self.model, x, y, norm=cfg.norm, eps=cfg.eps, steps=cfg.steps,
                       step_size=cfg.step_size, random_start=cfg.random_start,
                       restarts=cfg.restarts)

    # -- steps ---------------------------------------------------------------------------
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.hparams.adversarial and self.attack.eps > 0:
            frac = self.current_eps_fraction()
            cfg = self.attack if frac == 1.0 else self.attack.scaled(frac)
            x_train = self.adversarial_examples(x, y, cfg)
            self.log("train/eps", cfg.eps, on_step=True, on_epoch=False)
        else:
            x_train = x
        logits = self.model(x_train)
        loss = F.cross_entropy(logits.float(), y)
        if self.hparams.adversarial and self.attack.eps > 0:
            self.train_robust_acc(logits.detach(), y)
            self.log("train/robust_acc", self.train_robust_acc, on_step=False, on_epoch=True)
        if self.hparams.train_clean_acc and x_train is not x:
            with torch.no_grad():
                was = self.model.training
                self.model.eval()
                clean = self.model(x)
                self.model.train(was)
            self.train_clean_acc(clean, y)
            self.log("train/clean_acc", self.train_clean_acc, on_step=False, on_epoch=True)
        elif x_train is x:
            self.train_clean_acc(logits.detach(), y)
            self.log("train/clean_acc", self.train_clean_acc, on_step=False, on_epoch=True)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def _evaluate(self, batch: tuple[Tensor, Tensor], stage: str, config: PGDConfig | None,
                  clean_metric: torchmetrics.Metric, robust_metric: torchmetrics.Metric) -> None:
        x, y = batch
        logits = self.model(x)
        clean_metric(logits, y)
        self.log(f"{stage}/loss", F.cross_entropy(logits.float(), y), sync_dist=True)
        self.log(f"{stage}/clean_acc", clean_metric, prog_bar=True)
        if config is not None and config.eps > 0:
            x_adv = self.adversarial_examples(x, y, config)
            robust_metric(self.model(x_adv), y)
            self.log(f"{stage}/robust_acc", robust_metric, prog_bar=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        cfg = self.attack if self.hparams.val_attack else None
        self._evaluate(batch, "val", cfg, self.val_clean_acc, self.val_robust_acc)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_attack, self.test_clean_acc,
                       self.test_robust_acc)

    def configure_optimizers(self) -> dict[str, object]:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr,
                              momentum=self.hparams.momentum,
                              weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_milestones:
            sched = torch.optim.lr_scheduler.MultiStepLR(
                opt, milestones=list(self.hparams.lr_milestones), gamma=0.1)
        else:
            max_epochs = getattr(getattr(self, "_trainer", None), "max_epochs", None)
            t_max = max_epochs if max_epochs and max_epochs > 0 else 100
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=t_max)
        return {"optimizer": opt, "lr_scheduler": sched}


def _preset(name: str, shape: tuple[int, ...] | None) -> PGDConfig:
    return preset(name, shape)


__all__ = ["NormalizedModel", "RobustClassifier"]
