"""Grad-IFV: the target objective of a visualization from its Jacobian (§2.1, supp. S1).

For the cosine-power objective ``S_x(y) = xᵀy·(xᵀy/‖y‖)^k`` the gradient of
``f_x ∘ P`` at ``v_I`` is ``(k+1)·q^k · xᵀ Z_k(y) Dy`` with

    Z_k(y) = Id − k/(k+1)·ȳȳᵀ,   ȳ = y/‖y‖          (§2.1, S1)

so a realization ``I*`` (a local maximum) satisfies ``‖xᵀ Z_k(y) Dy‖ = 0``. Grad-IFV solves
Opt. (3): ``argmin_{‖x‖=1} ‖xᵀ Z_k(y) Dy‖²`` s.t. ``Z_k(y)x ∈ C`` for a critical space
``C`` (default ``ℝ^{n_f}``). With an orthonormal basis ``C_M`` of ``C`` and the SVD
``UΣVᵀ = Z_k(y)⁻¹ C_M`` (``Z_k(y)⁻¹ = Id + k·ȳȳᵀ`` by Sherman–Morrison, S1), the
substitution ``x = Uσ`` reduces it to ``argmin_{‖σ‖=1} ‖σᵀ M‖²`` with
``M = Uᵀ Z_k(y) Dy``, whose solution is the left-singular vector of ``M`` to the smallest
singular value: the eigenvector of ``MMᵀ`` to the smallest eigenvalue (§2.1).

Only ``Dy Dyᵀ`` enters (``MMᵀ = Uᵀ Z (Dy Dyᵀ) Z U``), so the functions take either the
Jacobian or its Gram matrix (:func:`lightning_fv.ifv.jacobian.jacobian_gram`). All are
batched over visualizations and computed in float64.

Sign rule: the solution is defined up to sign; we return the one with ``xᵀy > 0`` (the
side on which ``S_x(y)`` is positive, i.e. the direction that was *maximized*); if
``xᵀy = 0`` (to 1e-12) the entry of largest magnitude is made positive.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _unit(y: Tensor, eps: float = 1e-30) -> Tensor:
    n = y.norm(dim=-1, keepdim=True)
    if (n <= eps).any():
        raise ValueError("feature response y has zero norm; Z_k(y) is undefined (§2.1)")
    return y / n


def _check_k(k: float) -> None:
    if not k >= 0:
        raise ValueError(f"cosine power k must be >= 0, got {k}")


def z_matrix(y: Tensor, k: float) -> Tensor:
    """``Z_k(y) = Id − k/(k+1)·ȳȳᵀ`` (§2.1, S1) for ``y`` ``(n_f,)`` or ``(B, n_f)``;
    returns ``(n_f, n_f)`` or ``(B, n_f, n_f)``. Symmetric; ``Z_0 = Id``."""
    _check_k(k)
    yb = _unit(y)
    eye = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)
    return eye - (k / (k + 1)) * yb.unsqueeze(-1) * yb.unsqueeze(-2)


def z_matrix_inverse(y: Tensor, k: float) -> Tensor:
    """Closed-form ``Z_k(y)⁻¹ = Id + k·ȳȳᵀ`` (Sherman–Morrison, S1); shapes as
    :func:`z_matrix`."""
    _check_k(k)
    yb = _unit(y)
    eye = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)
    return eye + k * yb.unsqueeze(-1) * yb.unsqueeze(-2)


def _as_gram(jacobian: Tensor | None, gram: Tensor | None) -> Tensor:
    if (jacobian is None) == (gram is None):
        raise ValueError("pass exactly one of jacobian (B, n_f, ...) or gram (B, n_f, n_f)")
    if gram is None:
        j = jacobian.flatten(2).double()
        return j @ j.transpose(1, 2)
    if gram.dim() != 3 or gram.shape[1] != gram.shape[2]:
        raise ValueError(f"gram must be (B, n_f, n_f), got {tuple(gram.shape)}")
    return gram.double()


def _critical_basis(critical: Tensor | None, n_f: int, device: torch.device) -> Tensor | None:
    if critical is None:
        return None
    c = critical.to(device=device, dtype=torch.float64)
    if c.dim() != 2 or c.shape[0] != n_f or not 1 <= c.shape[1] <= n_f:
        raise ValueError(
            f"critical space basis must be (n_f={n_f}, dim C) with 1 <= dim C <= n_f, got "
            f"{tuple(critical.shape)}"
        )
    q, _ = torch.linalg.qr(c)  # orthonormal C_M (S1)
    return q


def substitution_basis(y: Tensor, k: float, critical: Tensor | None = None) -> Tensor:
    """``U`` ``(B, n_f, dim C)``: orthonormal basis of ``Z_k(y)⁻¹ C`` from the SVD of
    ``Z_k(y)⁻¹ C_M`` (S1, "Incorporating the linear constraint"). ``critical`` is a basis
    ``(n_f, dim C)`` of ``C`` (``None``: ``C = ℝ^{n_f}``, ``U = Id``)."""
    y = y.double().reshape(-1, y.shape[-1])
    b, n_f = y.shape
    cm = _critical_basis(critical, n_f, y.device)
    if cm is None:
        return torch.eye(n_f, dtype=torch.float64, device=y.device).expand(b, n_f, n_f)
    u, _, _ = torch.linalg.svd(z_matrix_inverse(y, k) @ cm, full_matrices=False)
    return u


def fix_sign(x: Tensor, y: Tensor) -> Tensor:
    """Apply the documented sign rule to ``x`` ``(B, n_f)``: ``xᵀy > 0``, else the entry of
    largest magnitude positive."""
    dot = (x * y.to(x.dtype)).sum(-1)
    big = x.gather(-1, x.abs().argmax(-1, keepdim=True)).squeeze(-1)
    s = torch.where(dot.abs() > 1e-12 * y.norm(dim=-1).to(x.dtype), dot.sign(), big.sign())
    s = torch.where(s == 0, torch.ones_like(s), s)
    return x * s.unsqueeze(-1)


def grad_ifv(
    y: Tensor,
    jacobian: Tensor | None = None,
    *,
    gram: Tensor | None = None,
    k: float = 2.0,
    critical: Tensor | None = None,
    return_singular_values: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Predicted target objectives ``x*`` of ``B`` realizations: the solution of Opt. (3).

    Args:
        y: feature responses ``(B, n_f)`` of the realizations.
        jacobian: ``Dy`` ``(B, n_f, ...)`` w.r.t. the visualization's parameters, or
        gram: ``Dy Dyᵀ`` ``(B, n_f, n_f)`` instead.
        k: cosine power of the objective the realizations were optimized for (§2).
        critical: basis ``(n_f, dim C)`` of the critical space ``C`` (Eq. 4, Algorithm 1);
            ``None`` for ``C = ℝ^{n_f}`` (§3.4).
        return_singular_values: also return the singular values of ``M`` ``(B, dim C)``
            in increasing order (the first is the residual ``‖x*ᵀ Z_k Dy‖``).

    Returns:
        ``x*`` ``(B, n_f)``, unit norm, float64, sign by the module's rule.
    """
    g = _as_gram(jacobian, gram)
    y = y.double().to(g.device)
    if y.dim() != 2 or y.shape != g.shape[:2]:
        raise ValueError(f"y must be (B, n_f) = {tuple(g.shape[:2])}, got {tuple(y.shape)}")
    z = z_matrix(y, k)
    u = substitution_basis(y, k, critical)  # (B, n_f, d)
    zu = z @ u
    mmt = zu.transpose(1, 2) @ g @ zu  # M Mᵀ = Uᵀ Z Dy Dyᵀ Z U
    mmt = 0.5 * (mmt + mmt.transpose(1, 2))
    evals, evecs = torch.linalg.eigh(mmt)  # ascending
    x = u @ evecs[..., :, 0:1]
    x = fix_sign(x.squeeze(-1) / x.squeeze(-1).norm(dim=-1, keepdim=True), y)
    if return_singular_values:
        return x, evals.clamp_min(0).sqrt()
    return x


def gradient_residual(x: Tensor, y: Tensor, jacobian: Tensor | None = None, *,
                      gram: Tensor | None = None, k: float = 2.0) -> Tensor:
    """``‖xᵀ Z_k(y) Dy‖`` ``(B,)``: the quantity Opt. (3) minimizes (the gradient of
    ``f_x ∘ P`` up to the factor ``(k+1)q^k``, §2.1)."""
    g = _as_gram(jacobian, gram)
    zx = (z_matrix(y.double().to(g.device), k) @ x.double().to(g.device).unsqueeze(-1))
    return (zx.transpose(1, 2) @ g @ zx).flatten().clamp_min(0).sqrt()


__all__ = [
    "fix_sign",
    "grad_ifv",
    "gradient_residual",
    "substitution_basis",
    "z_matrix",
    "z_matrix_inverse",
]
