"""Projected normalized gradient steps in an ℓ2 or ℓ∞ ball.

One implementation of the step shared by norm-constrained feature visualization
(`robust-representations…` §4.1, App. A.4) and PGD adversarial training/attacks
(`robust-representations…` §3, App. A.3; Madry et al. 2018).

All images are ``(B, C, H, W)`` tensors in the valid pixel range ``[lo, hi]``
(default ``[0, 1]`` RGB). Radii ``eps`` and step sizes are in the same pixel units,
measured per sample over all of ``C·H·W`` values.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Norm = Literal["l2", "linf"]
_VALID_NORMS = ("l2", "linf")


def check_norm(norm: str) -> Norm:
    """Return ``norm`` if it is ``"l2"`` or ``"linf"``, else raise a ``ValueError`` naming it."""
    if norm not in _VALID_NORMS:
        raise ValueError(f"unknown norm {norm!r}; valid norms are {_VALID_NORMS}")
    return norm  # type: ignore[return-value]


def _per_sample_norm(x: Tensor) -> Tensor:
    """ℓ2 norm of each sample of ``x`` ``(B, ...)``, shaped ``(B, 1, ..., 1)`` for broadcasting."""
    flat = x.flatten(1).norm(p=2, dim=1)
    return flat.view(-1, *([1] * (x.dim() - 1)))


def normalized_step(grad: Tensor, step_size: float | Tensor, norm: Norm) -> Tensor:
    """The steepest-ascent step of length ``step_size`` in ``norm`` for gradient ``grad``.

    ℓ∞: ``step_size · sign(grad)``; ℓ2: ``step_size · grad / ‖grad‖₂`` per sample (a zero
    gradient gives a zero step, never NaN).
    """
    check_norm(norm)
    if norm == "linf":
        return step_size * grad.sign()
    denom = _per_sample_norm(grad).clamp_min(torch.finfo(grad.dtype).tiny)
    return step_size * grad / denom


def project(delta: Tensor, eps: float | Tensor, norm: Norm) -> Tensor:
    """Project the perturbation ``delta`` ``(B, ...)`` onto the ``norm`` ball of radius ``eps``."""
    check_norm(norm)
    if norm == "linf":
        if isinstance(eps, Tensor):
            return torch.maximum(torch.minimum(delta, eps), -eps)
        return delta.clamp(-eps, eps)
    n = _per_sample_norm(delta)
    factor = torch.clamp(eps / n.clamp_min(torch.finfo(delta.dtype).tiny), max=1.0)
    return delta * factor


def projected_step(
    x: Tensor,
    grad: Tensor,
    x0: Tensor,
    eps: float | Tensor,
    step_size: float | Tensor,
    norm: Norm = "l2",
    clamp: tuple[float, float] | None = (0.0, 1.0),
    descend: bool = False,
) -> Tensor:
    """One projected normalized gradient step (ascent by default).

    ``x_{t+1} = clip_[lo,hi]( x0 + Π_{‖δ‖≤ε}( x_t ± s·step(∇) − x0 ) )``

    Args:
        x: current iterate ``(B, C, H, W)``.
        grad: gradient of the objective w.r.t. ``x``, same shape.
        x0: centre of the ball (the seed / clean image), same shape.
        eps: ball radius (pixel units). A tensor broadcastable to ``(B, 1, 1, 1)`` gives a
            per-sample radius (e.g. for ε warm-up).
        step_size: step length (pixel units), scalar or broadcastable tensor.
        norm: ``"l2"`` or ``"linf"``.
        clamp: valid pixel range, or ``None`` for no clamping.
        descend: step against the gradient (minimization) instead of along it.

    Returns:
        The new iterate, detached, same shape and dtype as ``x``.
    """
    step = normalized_step(grad, step_size, norm)
    x_new = x - step if descend else x + step
    x_new = x0 + project(x_new - x0, eps, norm)
    if clamp is not None:
        x_new = x_new.clamp(*clamp)
    return x_new.detach()


def random_start(
    x0: Tensor,
    eps: float | Tensor,
    norm: Norm,
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] | None = (0.0, 1.0),
) -> Tensor:
    """A uniformly random point of the ``norm`` ball of radius ``eps`` around ``x0``.

    ℓ∞: uniform in the cube. ℓ2: uniform in the ball (Gaussian direction, radius
    ``eps · U^{1/d}``). The result is clamped to the pixel range.
    """
    check_norm(norm)
    if norm == "linf":
        u = torch.rand(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        delta = (2 * u - 1) * eps
    else:
        g = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        d = x0[0].numel()
        r = torch.rand(
            (x0.shape[0],) + (1,) * (x0.dim() - 1),
            generator=generator,
            device=x0.device,
            dtype=x0.dtype,
        ) ** (1.0 / d)
        delta = g / _per_sample_norm(g) * r * eps
    out = x0 + delta
    if clamp is not None:
        out = out.clamp(*clamp)
    return out.detach()
