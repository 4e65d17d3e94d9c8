"""Projected gradient descent (PGD) attacks in [0, 1] pixel space (Madry et al. 2018;
`robust-representations…` §3 Eq. 3 and App. A.3).

The model takes ``(B, C, H, W)`` RGB images in ``[0, 1]`` and does its own input
normalization (a :class:`lightning_fv.models.Normalize` inside the model), so radii and
step sizes are in pixel units, per sample over all ``C·H·W`` values.

During an attack the model is in eval mode with frozen parameters
(:func:`lightning_fv.optvis.hooks.preserved_state`): batch-norm running statistics are
never updated, no weight gradient is built, and the model's ``training`` flags,
``requires_grad`` flags and ``.grad`` tensors are exactly restored afterwards. Each inner
step computes only the input gradient (``torch.autograd.grad`` w.r.t. the images) and
takes the shared projected step (:func:`lightning_fv.optvis.projected.projected_step`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fv.optvis.hooks import preserved_state
from lightning_fv.optvis.projected import Norm, check_norm, projected_step
from lightning_fv.optvis.projected import random_start as random_point

LossFn = Callable[[Tensor, Tensor], Tensor]


def default_step_size(eps: float, steps: int) -> float:
    """Madry et al.'s rule ``2.5·ε/steps`` (``ε`` for a single step, i.e. FGSM)."""
    return float(eps) if steps <= 1 else 2.5 * float(eps) / steps


@dataclass(frozen=True)
class PGDConfig:
    """Everything that defines a PGD adversary (App. A.3), validated on construction.

    Attributes:
        norm: ``"l2"`` or ``"linf"``.
        eps: radius of the perturbation ball in [0, 1] pixel units (ℓ∞ radius ≤ 1).
        steps: number of projected gradient steps (``0`` with random start = random noise).
        step_size: length of each normalized step (pixel units). ``None`` means
            :func:`default_step_size` (``2.5·ε/steps``, Madry et al.).
        random_start: start from a uniformly random point of the ball.
        restarts: independent runs; per sample the strongest is kept (a successful one,
            else the one with the highest loss).
        targeted: ``y`` are target labels and the loss is minimized.
    """

    norm: Norm = "l2"
    eps: float = 0.5
    steps: int = 7
    step_size: float | None = None
    random_start: bool = True
    restarts: int = 1
    targeted: bool = False

    def __post_init__(self) -> None:
        check_norm(self.norm)
        if not isinstance(self.steps, int) or isinstance(self.steps, bool) or self.steps < 0:
            raise ValueError(f"steps must be an integer >= 0, got {self.steps!r}")
        if not isinstance(self.restarts, int) or self.restarts < 1:
            raise ValueError(f"restarts must be an integer >= 1, got {self.restarts!r}")
        if not math.isfinite(float(self.eps)) or self.eps < 0:
            raise ValueError(f"eps must be a finite number >= 0 (pixel units), got {self.eps!r}")
        if self.norm == "linf" and self.eps > 1:
            raise ValueError(
                f"linf eps={self.eps} exceeds the [0, 1] pixel range; give eps in [0, 1] "
                f"pixel units (e.g. 8/255 = {8 / 255:.4f}, not 8)"
            )
        if self.step_size is None:
            object.__setattr__(self, "step_size", default_step_size(self.eps, self.steps))
        s = float(self.step_size)  # type: ignore[arg-type]
        if not math.isfinite(s) or s < 0 or (s == 0 and self.steps > 0 and self.eps > 0):
            raise ValueError(f"step_size must be a finite number > 0, got {self.step_size!r}")
        if self.steps == 1 and s > self.eps:
            raise ValueError(
                f"step_size={s} is larger than eps={self.eps} with a single step: the step "
                "leaves the ball and is projected back; use step_size <= eps (FGSM: "
                "step_size = eps) or more steps"
            )

    def scaled(self, factor: float) -> PGDConfig:
        """The same adversary with ``eps`` and ``step_size`` multiplied by ``factor``.

        Use ``factor = sqrt(d / d_ref)`` to carry an ℓ2 radius from ``d_ref`` input values
        (224·224·3 for ImageNet) to ``d`` values at the same per-pixel strength.
        """
        if factor <= 0:
            raise ValueError(f"scale factor must be > 0, got {factor}")
        return replace(self, eps=self.eps * factor, step_size=self.step_size * factor)

    def stronger(self, steps: int | None = None, restarts: int | None = None) -> PGDConfig:
        """An evaluation adversary: more steps (default ``max(20, 2·steps)``) with the
        ``2.5·ε/steps`` step rule, and more restarts (default ``max(3, restarts)``)."""
        steps = max(20, 2 * self.steps) if steps is None else steps
        restarts = max(3, self.restarts) if restarts is None else restarts
        return replace(self, steps=steps, restarts=restarts,
                       step_size=default_step_size(self.eps, steps))

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, **kwargs: object) -> Tensor:
        """Run :func:`pgd` with this configuration."""
        return pgd(model, x, y, norm=self.norm, eps=self.eps, steps=self.steps,
                   step_size=self.step_size, random_start=self.random_start,
                   restarts=self.restarts, targeted=self.targeted, **kwargs)  # type: ignore[arg-type]


IMAGENET_DIM = 3 * 224 * 224

#: Settings of `robust-representations…` App. A.3–A.6 (restricted ImageNet, 224 px,
#: ℓ2 in [0, 1] pixel units) and the classic CIFAR-10 ℓ∞ adversary of Madry et al. 2018.
#: ``scaled(sqrt(d / IMAGENET_DIM))`` carries an ImageNet ℓ2 setting to ``d`` input values.
PRESETS: dict[str, PGDConfig] = {
    # App. A.3, Table 3: adversarial training / evaluation.
    "paper_training": PGDConfig("l2", eps=3.5, steps=7, step_size=0.1),
    # App. A.4: maximizing a representation coordinate (§4.1, Eq. 4).
    "paper_feature_vis": PGDConfig("l2", eps=1000.0, steps=200, step_size=1.0,
                                   random_start=False),
    # App. A.5: representation inversion (Eq. 5) and interpolation (Eq. 6).
    "paper_inversion": PGDConfig("l2", eps=1000.0, steps=10000, step_size=1.0,
                                 random_start=False),
    # App. A.6: feature-level sensitivity (Eq. 8) accentuated by feature addition (Eq. 7).
    "paper_sensitivity": PGDConfig("l2", eps=40.0, steps=60, step_size=1.0,
                                   random_start=False),
    # Madry et al. 2018, CIFAR-10: ε = 8/255, 7 steps of 2/255 (training).
    "cifar10_linf": PGDConfig("linf", eps=8 / 255, steps=7, step_size=2 / 255),
}


def preset(name: str, input_shape: tuple[int, ...] | None = None) -> PGDConfig:
    """The named :data:`PRESETS` entry; with ``input_shape`` ``(C, H, W)``, an ℓ2 preset
    of the paper is rescaled from 224 px ImageNet to that size (``√(d/d_ImageNet)``)."""
    if name not in PRESETS:
        raise KeyError(f"unknown PGD preset {name!r}; available: {sorted(PRESETS)}")
    cfg = PRESETS[name]
    if input_shape is not None and cfg.norm == "l2" and name.startswith("paper_"):
        cfg = cfg.scaled(math.sqrt(math.prod(input_shape) / IMAGENET_DIM))
    return cfg


def _per_sample_ce(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


def _grad_ready(t: Tensor) -> Tensor:
    """``t`` detached, copied out of inference mode if needed (autograd refuses to save
    inference tensors)."""
    t = t.detach()
    return t.clone() if t.is_inference() else t


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    norm: Norm = "l2",
    eps: float = 0.5,
    steps: int = 7,
    step_size: float | None = None,
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss_fn: LossFn | None = None,
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] = (0.0, 1.0),
) -> Tensor:
    """PGD adversarial examples for ``model`` (Eq. 3's inner maximization, App. A.3).

    Untargeted: maximize the loss of the true labels ``y``. Targeted: minimize the loss of
    the target labels ``y``. Each step is ``x ← clip(x0 + Π_ε(x ± s·step(∇x L) − x0))``
    with the normalized ℓ2/ℓ∞ step (:func:`lightning_fv.optvis.projected.projected_step`).

    Args:
        model: images ``(B, C, H, W)`` in [0, 1] → logits ``(B, K)`` (normalization inside).
        x: clean images ``(B, C, H, W)`` in ``clamp`` range; may be an inference tensor.
        y: labels ``(B,)`` (int64), true (untargeted) or target (targeted).
        norm, eps, steps, step_size, random_start, restarts, targeted: see
            :class:`PGDConfig` (validated the same way).
        loss_fn: ``(logits, y) → (B,)`` per-sample loss; default cross-entropy.
        generator: random source of the random start (for reproducibility).
        clamp: valid pixel range.

    Returns:
        Adversarial images ``(B, C, H, W)``, detached, with ``‖x_adv − x‖ ≤ eps`` per sample
        and values in ``clamp``. The model's mode, ``requires_grad`` flags and gradients
        are unchanged, and its batch-norm statistics are never updated.
    """
    cfg = PGDConfig(norm, eps, steps, step_size, random_start, restarts, targeted)
    loss_fn = loss_fn or _per_sample_ce
    if x.dim() < 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} need the same batch size")
    step = float(cfg.step_size)  # type: ignore[arg-type]
    with torch.inference_mode(False), torch.enable_grad(), preserved_state(model):
        x0 = _grad_ready(x)
        y = _grad_ready(y)
        best = best_loss = best_ok = None
        for _ in range(cfg.restarts):
            xa = (
                random_point(x0, cfg.eps, cfg.norm, generator, clamp)
                if cfg.random_start and cfg.eps > 0 else x0.clone()
            )
            for _ in range(cfg.steps):
                xa.requires_grad_(True)
                loss = loss_fn(model(xa), y).sum()
                (grad,) = torch.autograd.grad(loss, xa)
                xa = projected_step(xa, grad, x0, cfg.eps, step, cfg.norm, clamp,
                                    descend=cfg.targeted)
            if cfg.restarts == 1:
                return xa
            with torch.no_grad():
                logits = model(xa)
                lv = loss_fn(logits, y).float()
                ok = (logits.argmax(1) == y) if cfg.targeted else (logits.argmax(1) != y)
                score = -lv if cfg.targeted else lv
            if best is None:
                best, best_loss, best_ok = xa, score, ok
                continue
            take = (ok & ~best_ok) | ((ok == best_ok) & (score > best_loss))
            best = torch.where(take.view(-1, *([1] * (x0.dim() - 1))), xa, best)
            best_loss = torch.where(take, score, best_loss)
            best_ok = best_ok | ok
    return best  # type: ignore[return-value]


@torch.no_grad()
def attack_success(model: nn.Module, x_adv: Tensor, y: Tensor, targeted: bool = False) -> Tensor:
    """Per-sample success ``(B,)`` bool: misclassified (untargeted) or predicted as the
    target (targeted), evaluated with the model in eval mode (state restored)."""
    with preserved_state(model):
        pred = model(x_adv).argmax(1)
    return pred == y if targeted else pred != y


def robust_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    config: PGDConfig,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """``(clean accuracy, robust accuracy)`` of ``model`` on ``(x, y)`` under ``config``
    (untargeted), in batches of ``batch_size``."""
    if config.targeted:
        raise ValueError("robust_accuracy needs an untargeted config (targeted=False)")
    clean = robust = 0
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        clean += int((~attack_success(model, xb, yb)).sum())
        xa = config(model, xb, yb, generator=generator)
        robust += int((~attack_success(model, xa, yb)).sum())
    n = max(len(y), 1)
    return clean / n, robust / n


__all__ = ["IMAGENET_DIM", "PGDConfig", "PRESETS", "attack_success", "default_step_size",
           "pgd", "preset", "robust_accuracy"]
