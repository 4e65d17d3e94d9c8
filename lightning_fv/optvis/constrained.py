"""Norm-constrained maximization from seed images (`robust-representations…` §4.1, App. A.4).

Maximize an objective inside an ℓ2 or ℓ∞ ball around seed images with normalized
projected gradient steps (:func:`lightning_fv.optvis.projected.projected_step`, the same
step PGD adversarial training uses). App. A.4 (restricted ImageNet, robust ResNet-50)
uses ℓ2 with ε = 1000 (in effect unconstrained), step size 1 and 200 steps; App. A.6
(feature addition) uses ε = 40, step size 1 and 60 steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_fv.optvis.hooks import capture, preserved_state
from lightning_fv.optvis.objectives import INPUT, OUTPUT, Objective, as_objective
from lightning_fv.optvis.projected import Norm, check_norm, projected_step

ObjectiveFn = Callable[[Tensor], Tensor]


def maximize_in_ball(
    objective_fn: ObjectiveFn,
    x0: Tensor,
    eps: float | Tensor,
    step_size: float | Tensor,
    steps: int,
    norm: Norm = "l2",
    clamp: tuple[float, float] | None = (0.0, 1.0),
    minimize: bool = False,
) -> Tensor:
    """Projected normalized gradient ascent of ``objective_fn`` in a ball around ``x0``.

    Args:
        objective_fn: images ``(B, C, H, W)`` → per-sample values ``(B,)`` to maximize.
        x0: seed images ``(B, C, H, W)`` (the centre of the ball), in the pixel range.
        eps: radius (pixel units; scalar or per-sample tensor broadcastable to
            ``(B, 1, 1, 1)``).
        step_size: step length per iteration (pixel units).
        steps: number of steps.
        norm: ``"l2"`` or ``"linf"``.
        clamp: valid pixel range (``None`` for none).
        minimize: descend instead (e.g. representation inversion, Eq. 5).

    Returns:
        The final images ``(B, C, H, W)``, detached; ``‖x − x0‖ ≤ eps`` holds per sample.
    """
    check_norm(norm)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if isinstance(eps, (int, float)) and eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    x0 = x0.detach()
    x = x0.clone()
    for _ in range(steps):
        with torch.enable_grad():
            x.requires_grad_(True)
            vals = objective_fn(x)
            if vals.dim() != 1 or vals.shape[0] != x.shape[0]:
                raise ValueError(f"objective_fn must return (B,) = ({x.shape[0]},) values, "
                                 f"got {tuple(vals.shape)}")
            (grad,) = torch.autograd.grad(vals.sum(), x)
        if not torch.isfinite(grad).all():
            raise FloatingPointError("non-finite gradient in norm-constrained maximization")
        x = projected_step(x.detach(), grad, x0, eps, step_size, norm, clamp, descend=minimize)
    return x


def model_objective_fn(
    model: nn.Module,
    objective: Objective | str,
    normalize: nn.Module | None = None,
) -> ObjectiveFn:
    """Wrap an :class:`Objective` on ``model`` as ``images → (B,)`` for
    :func:`maximize_in_ball`. Call it inside :func:`render_in_ball` (or your own
    ``preserved_state``/``capture`` block); hooks are opened per call here."""
    obj = as_objective(objective)

    def fn(x: Tensor) -> Tensor:
        with capture(model, obj.model_layers) as acts:
            out = model(normalize(x) if normalize is not None else x)
            acts[OUTPUT] = out
            acts[INPUT] = x
            return obj(acts)

    return fn


def render_in_ball(
    model: nn.Module,
    objective: Objective | str,
    x0: Tensor,
    eps: float = 1000.0,
    step_size: float = 1.0,
    steps: int = 200,
    norm: Norm = "l2",
    normalize: nn.Module | None = None,
) -> Tensor:
    """Feature visualization from seed images ``x0`` ``(B, C, H, W)`` in an ε-ball
    (App. A.4 defaults: ℓ2, ε = 1000, step 1, 200 steps), with the model in eval mode
    and its state restored after."""
    with preserved_state(model):
        return maximize_in_ball(model_objective_fn(model, objective, normalize), x0, eps,
                                step_size, steps, norm)
