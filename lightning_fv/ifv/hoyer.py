"""Hoyer sparseness and the sparse target-objective sampler (supp. S2, §3.2).

Uniform samples of the sphere ``Ω`` are almost never sparse in high dimension (Fig. S1),
yet sparse objectives (single features ``e_i``) are what feature visualization studies.
S2 therefore samples a sparsity ``s ~ U[0, 1]``, a uniform unit vector ``x₀``, and moves
``x₀`` on the sphere by curvilinear search (Wen & Yin 2013) until ``hoyer(x) ≈ s``
(minimizing ``(hoyer(x) − s)²``). Entries are made non-negative (§3.2: "target objectives
with nonnegative entries"); the Hoyer measure does not change under sign flips of entries.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def hoyer(x: Tensor, eps: float = 1e-12) -> Tensor:
    """Hoyer (2004) sparseness of ``x`` ``(..., n)`` along the last dim, in [0, 1]:
    ``(√n − ‖x‖₁/‖x‖₂) / (√n − 1)``; 1 for canonical vectors ``e_i``, 0 for constant
    vectors (S2). ``n = 1`` gives 1."""
    n = x.shape[-1]
    if n == 1:
        return torch.ones(x.shape[:-1], dtype=x.dtype, device=x.device)
    l2 = x.norm(dim=-1)
    if (l2 <= eps).any():
        raise ValueError("the Hoyer measure is undefined for the zero vector")
    sq = math.sqrt(n)
    return (sq - x.abs().sum(-1) / l2) / (sq - 1)


def _cayley(x: Tensor, g: Tensor, tau: Tensor) -> Tensor:
    """Wen & Yin (2013) Lemma 4: ``Y(τ) = (I + τ/2·A)⁻¹(I − τ/2·A)x`` with
    ``A = g xᵀ − x gᵀ``, via ``U = [g, x]``, ``V = [x, −g]``:
    ``Y(τ) = x − τ U (I + τ/2·VᵀU)⁻¹ Vᵀx``. Batched ``(N, n)``; keeps ``‖Y‖ = ‖x‖``."""
    u = torch.stack([g, x], -1)  # (N, n, 2)
    v = torch.stack([x, -g], -1)
    eye = torch.eye(2, dtype=x.dtype, device=x.device)
    small = eye + 0.5 * tau[:, None, None] * (v.transpose(1, 2) @ u)
    rhs = v.transpose(1, 2) @ x.unsqueeze(-1)
    return x - tau[:, None] * (u @ torch.linalg.solve(small, rhs)).squeeze(-1)


def sparse_unit_vectors(
    sparsity: Tensor,
    n: int,
    generator: torch.Generator | None = None,
    *,
    nonnegative: bool = True,
    tol: float = 1e-3,
    max_iter: int = 1000,
) -> Tensor:
    """Unit vectors ``(N, n)`` with ``hoyer(x_i) ≈ sparsity[i]`` (S2).

    Each starts from a uniform sample of the sphere and runs curvilinear search on the
    sphere (Wen & Yin 2013: Cayley-transform steps, Barzilai–Borwein step sizes, Armijo
    backtracking) on ``F(x) = (hoyer(x) − s)²`` until ``|hoyer(x) − s| < tol``.

    Args:
        sparsity: target sparseness values in [0, 1] ``(N,)``.
        n: dimension (``n_f``).
        generator: for the starting points (CPU).
        nonnegative: return ``|x|`` (same sparseness).
        tol: accepted ``|hoyer(x) − s|``.
        max_iter: curvilinear-search iterations.
    """
    s = torch.as_tensor(sparsity, dtype=torch.float64).flatten()
    if n < 2:
        raise ValueError(f"need n >= 2 features, got {n}")
    if ((s < 0) | (s > 1)).any():
        raise ValueError(f"sparsity must lie in [0, 1], got {s.tolist()}")
    x = torch.randn(s.numel(), n, generator=generator, dtype=torch.float64).abs()
    x = x / x.norm(dim=-1, keepdim=True)
    sq = math.sqrt(n)

    # The search runs on the non-negative part of the sphere, where ‖x‖₁ = Σx is smooth
    # (the kinks of |x| at 0 stall a line search); steps leaving the orthant are clipped
    # back onto it. Signs are drawn at the end when ``nonnegative=False``.
    def f_and_grad(z: Tensor) -> tuple[Tensor, Tensor]:
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            f = ((sq - z.sum(-1) / z.norm(dim=-1)) / (sq - 1) - s) ** 2
            (g,) = torch.autograd.grad(f.sum(), z)
        return f.detach(), g

    def step(z: Tensor, g: Tensor, t: Tensor) -> Tensor:
        y = _cayley(z, g, t).clamp_min(0)
        return y / y.norm(dim=-1, keepdim=True).clamp_min(1e-300)

    near_one = s >= 1 - tol  # e_i (at the largest start entry) already has hoyer = 1
    if near_one.any():
        x[near_one] = torch.nn.functional.one_hot(x[near_one].argmax(-1), n).double()
    f, g = f_and_grad(x)
    tau = torch.full_like(s, 1.0)
    prev_x = prev_g = None
    for _ in range(max_iter):
        active = f.sqrt() >= tol
        if not active.any():
            break
        pg = g - x * (g * x).sum(-1, keepdim=True)  # A x: the Riemannian gradient
        if prev_x is not None:  # Barzilai–Borwein step size (Wen & Yin §3.2)
            sx, sy = x - prev_x, pg - prev_g
            num, den = (sx * sx).sum(-1), (sx * sy).sum(-1).abs()
            tau = torch.where(den > 1e-20, num / den.clamp_min(1e-20), tau).clamp(1e-6, 1e6)
        slope = -(pg * pg).sum(-1)  # d/dτ F(Y(τ)) at τ = 0 (Y'(0) = −A x)
        t = tau.clone()
        for _ls in range(40):  # Armijo backtracking
            fy, _ = f_and_grad(step(x, g, t))
            ok = fy <= f + 1e-4 * t * slope
            if ok.all():
                break
            t = torch.where(ok, t, 0.5 * t)
        t = torch.where(active, t, torch.zeros_like(t))
        prev_x, prev_g = x, pg
        x = step(x, g, t)
        f, g = f_and_grad(x)
    if not nonnegative:
        signs = torch.randint(0, 2, x.shape, generator=generator, dtype=torch.float64) * 2 - 1
        x = x * signs
    return x


def sample_targets(
    n: int,
    n_f: int,
    generator: torch.Generator | None = None,
    *,
    n_canonical: int = 0,
    nonnegative: bool = True,
    tol: float = 1e-3,
) -> tuple[Tensor, Tensor]:
    """Target objectives as in §3.2/§3.4: ``n`` vectors with Hoyer sparseness ``s ~ U[0,1]``
    (S2) followed by ``n_canonical`` canonical vectors ``e_i`` (distinct random features).

    Returns:
        ``x`` ``(n + n_canonical, n_f)`` unit vectors (float32, non-negative by default) and
        the asked sparseness ``s`` ``(n + n_canonical,)`` (1 for the canonical ones).
    """
    if n < 0 or n_canonical < 0 or n + n_canonical == 0:
        raise ValueError(f"need n + n_canonical > 0 targets, got n={n}, n_canonical={n_canonical}")
    if n_canonical > n_f:
        raise ValueError(f"n_canonical={n_canonical} exceeds the {n_f} features")
    s = torch.rand(n, generator=generator, dtype=torch.float64)
    xs = [sparse_unit_vectors(s, n_f, generator, nonnegative=nonnegative, tol=tol)] if n else []
    if n_canonical:
        idx = torch.randperm(n_f, generator=generator)[:n_canonical]
        xs.append(torch.eye(n_f, dtype=torch.float64)[idx])
        s = torch.cat([s, torch.ones(n_canonical, dtype=torch.float64)])
    return torch.cat(xs).float(), s.float()


__all__ = ["hoyer", "sample_targets", "sparse_unit_vectors"]
