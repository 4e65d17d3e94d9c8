"""The critical space ``C`` (Eq. 4) approximated by Algorithm 1, and the ρ search of §3.5.

`inverse-feature-visualization` §2.2: networks have directions ``c`` with ``cᵀ Dy_I ≈ 0``
for (almost) every input (dead neurons, the softmax shift invariance ``(1, …, 1)``). Such
``c`` are trivial solutions of Opt. (3); ``C = (∩_I coker Dy_I)^⊥`` (Eq. 4) removes them.

Algorithm 1 (co-kernel approximation), for sample Jacobians ``Dy⁽¹⁾ … Dy⁽ⁿ⁾``:

1. ``S_i = span{U_{·,j} | Σ_jj < ρ·‖Dy⁽ⁱ⁾‖₂}`` from the SVD ``UΣVᵀ = Dy⁽ⁱ⁾``.
2. Merge two weighted subspaces ``(U, w_U), (V, w_V)`` at a time: principal vectors
   ``(p_U^j, p_V^j)`` (Knyazev & Argentati 2002), drop pairs at an angle ≥ 45°, keep
   ``SLERP(p_U^j, p_V^j; w_V/(w_U + w_V))`` as the basis of the merged space of weight
   ``w_U + w_V``, until one space ``T`` is left (an approximate common co-kernel).
3. Return ``C = T^⊥``.

§3.5: a nested-intervals search over ``ρ ∈ (0, 1)`` lists the critical spaces of each
dimension (:func:`critical_spaces`). Inputs are Jacobians ``(n, n_f, ...)`` or their Gram
matrices ``Dy Dyᵀ`` ``(n, n_f, n_f)`` (the left-singular vectors of ``Dy`` are the
eigenvectors of ``Dy Dyᵀ``, its singular values the square roots of the eigenvalues).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_fv.ifv.gradifv import _as_gram

MAX_ANGLE_DEG = 45.0


def left_singular(jacobians: Tensor | None = None, *,
                  grams: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Left-singular vectors ``(n, n_f, n_f)`` (columns) and singular values ``(n, n_f)`` of
    each ``Dy``, in *increasing* order of singular value."""
    g = _as_gram(jacobians, grams)
    evals, evecs = torch.linalg.eigh(0.5 * (g + g.transpose(1, 2)))
    return evecs, evals.clamp_min(0).sqrt()


def small_singular_subspaces(rho: float, jacobians: Tensor | None = None, *,
                             grams: Tensor | None = None) -> list[Tensor]:
    """Step 1 of Algorithm 1: per sample, the orthonormal basis ``(n_f, d_i)`` of
    ``span{U_{·,j} | Σ_jj < ρ·‖Dy⁽ⁱ⁾‖₂}`` (``d_i`` may be 0)."""
    if not 0.0 < rho < 1.0:
        raise ValueError(f"rho must lie in (0, 1), got {rho}")
    vecs, sv = left_singular(jacobians, grams=grams)
    keep = sv < rho * sv[:, -1:]
    return [vecs[i][:, keep[i]] for i in range(vecs.shape[0])]


def _orth(a: Tensor) -> Tensor:
    if a.shape[1] == 0:
        return a
    q, _ = torch.linalg.qr(a)
    return q


def principal_angles(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Principal angles (radians, increasing) and principal vectors of ``span(a)`` and
    ``span(b)`` (``a`` ``(n, p)``, ``b`` ``(n, q)``; Knyazev & Argentati 2002, §2.2).

    Cosines come from the SVD of ``Q_aᵀQ_b``; angles whose cosine² ≥ ½ are taken from the
    sines (SVD of ``Q_b − Q_a Q_aᵀ Q_b``) for accuracy, as in ``scipy.linalg.subspace_angles``.

    Returns:
        ``angles`` ``(m,)``, ``p_a`` ``(n, m)``, ``p_b`` ``(n, m)`` with ``m = min(p, q)``;
        ``p_a[:, j]ᵀ p_b[:, j] = cos(angles[j])``.
    """
    qa, qb = _orth(a.double()), _orth(b.double())
    m = min(qa.shape[1], qb.shape[1])
    if m == 0:
        e = qa.new_zeros(qa.shape[0], 0)
        return qa.new_zeros(0), e, e.clone()
    y, cos, zt = torch.linalg.svd(qa.T @ qb)
    cos = cos[:m].clamp(-1, 1)
    pa, pb = qa @ y[:, :m], qb @ zt.T[:, :m]
    angles = torch.arccos(cos)
    small = cos**2 >= 0.5
    if small.any():
        # sines: singular values of the part of the smaller-dimensional basis orthogonal
        # to the other space (ascending sines ↔ ascending angles)
        if qa.shape[1] >= qb.shape[1]:
            resid = qb - qa @ (qa.T @ qb)
        else:
            resid = qa - qb @ (qb.T @ qa)
        sin = torch.linalg.svdvals(resid).flip(0)[:m].clamp(0, 1)
        angles = torch.where(small, torch.arcsin(sin), angles)
    return angles, pa, pb


def slerp(p: Tensor, q: Tensor, t: float) -> Tensor:
    """Spherical linear interpolation between unit columns ``p``, ``q`` ``(n, m)`` at ``t``
    (``t = 0`` gives ``p``); linear for (nearly) parallel pairs."""
    cos = (p * q).sum(0).clamp(-1, 1)
    theta = torch.arccos(cos)
    s = torch.sin(theta)
    lin = s < 1e-8
    safe = torch.where(lin, torch.ones_like(s), s)
    wp = torch.where(lin, 1 - t + 0 * s, torch.sin((1 - t) * theta) / safe)
    wq = torch.where(lin, t + 0 * s, torch.sin(t * theta) / safe)
    out = p * wp + q * wq
    return out / out.norm(dim=0, keepdim=True).clamp_min(1e-30)


def merge_subspaces(a: Tensor, w_a: float, b: Tensor, w_b: float,
                    max_angle_deg: float = MAX_ANGLE_DEG) -> tuple[Tensor, float]:
    """One merge of Algorithm 1: principal vectors of ``span(a)``, ``span(b)``, pairs at an
    angle ≥ ``max_angle_deg`` dropped, the rest SLERPed with ``t = w_b/(w_a + w_b)``.
    Returns an orthonormal basis ``(n, m')`` and the weight ``w_a + w_b``."""
    angles, pa, pb = principal_angles(a, b)
    keep = angles < math.radians(max_angle_deg)
    merged = slerp(pa[:, keep], pb[:, keep], w_b / (w_a + w_b))
    return _orth(merged), w_a + w_b


def approximate_cokernel(subspaces: list[Tensor],
                         max_angle_deg: float = MAX_ANGLE_DEG) -> Tensor:
    """The merge loop of Algorithm 1 over weighted subspaces ``(S_i, 1)``: always merges the
    two first entries of the list and appends the result (a fixed, documented order: the
    result depends on it, §2.2). Returns the basis ``(n_f, d)`` of the last space."""
    if not subspaces:
        raise ValueError("need at least one subspace")
    items = [(s.double(), 1.0) for s in subspaces]
    while len(items) > 1:
        (a, wa), (b, wb) = items.pop(0), items.pop(0)
        items.append(merge_subspaces(a, wa, b, wb, max_angle_deg))
    return items[0][0]


def orthogonal_complement(t: Tensor) -> Tensor:
    """Orthonormal basis ``(n, n − d)`` of ``span(t)^⊥`` for ``t`` ``(n, d)``."""
    n = t.shape[0]
    if t.shape[1] == 0:
        return torch.eye(n, dtype=t.dtype, device=t.device)
    q, _ = torch.linalg.qr(t, mode="complete")
    return q[:, t.shape[1]:]


def critical_space(rho: float, jacobians: Tensor | None = None, *, grams: Tensor | None = None,
                   max_angle_deg: float = MAX_ANGLE_DEG) -> tuple[Tensor, Tensor]:
    """Algorithm 1 at threshold ``rho``: the critical space ``C`` ``(n_f, dim C)`` and the
    trivial directions ``T = C^⊥`` ``(n_f, n_f − dim C)``, from sample Jacobians
    ``(n, n_f, ...)`` or Gram matrices ``(n, n_f, n_f)``."""
    t = approximate_cokernel(small_singular_subspaces(rho, jacobians, grams=grams),
                             max_angle_deg)
    return orthogonal_complement(t), t


@dataclass
class CriticalSpace:
    """A critical space found by :func:`critical_spaces`.

    ``basis`` ``(n_f, dim)`` spans ``C``; ``trivial`` ``(n_f, n_f − dim)`` spans ``C^⊥``;
    ``rho_low``/``rho_high`` bracket the thresholds that gave this dimension (``rho`` is the
    one ``basis`` was computed with).
    """

    dim: int
    rho: float
    rho_low: float
    rho_high: float
    basis: Tensor
    trivial: Tensor


def critical_spaces(jacobians: Tensor | None = None, *, grams: Tensor | None = None,
                    rho_min: float = 1e-6, rho_max: float = 0.999, tol: float = 0.02,
                    max_angle_deg: float = MAX_ANGLE_DEG) -> list[CriticalSpace]:
    """All critical spaces of different dimensions over ``ρ ∈ [rho_min, rho_max]`` (§3.5).

    Nested intervals on ``log ρ``: an interval whose end points give different dimensions
    of ``C`` is halved until it is shorter than ``tol`` (in ``log10 ρ``); an interval with
    equal dimensions at both ends is taken to hold that dimension throughout. For each
    dimension the space at the geometric middle of its widest ρ-interval is returned.

    Returns:
        :class:`CriticalSpace` entries, largest ``dim`` (smallest ρ) first.
    """
    g = _as_gram(jacobians, grams)
    lo, hi = math.log10(rho_min), math.log10(rho_max)
    cache: dict[float, int] = {}
    spaces: dict[float, tuple[Tensor, Tensor]] = {}

    def dim_at(lr: float) -> int:
        if lr not in cache:
            spaces[lr] = critical_space(10**lr, grams=g, max_angle_deg=max_angle_deg)
            cache[lr] = spaces[lr][0].shape[1]
        return cache[lr]

    def search(a: float, b: float) -> None:
        if dim_at(a) == dim_at(b) or b - a < tol:
            return
        mid = 0.5 * (a + b)
        search(a, mid)
        search(mid, b)

    search(lo, hi)
    pts = sorted(cache)
    # merge adjacent equal-dimension points into runs
    runs: list[tuple[int, float, float]] = []
    for p in pts:
        d = cache[p]
        if runs and runs[-1][0] == d:
            runs[-1] = (d, runs[-1][1], p)
        else:
            runs.append((d, p, p))
    best: dict[int, tuple[float, float]] = {}
    for d, a, b in runs:
        if d not in best or b - a > best[d][1] - best[d][0]:
            best[d] = (a, b)
    out = []
    for d, (a, b) in best.items():
        # the evaluated point of the run nearest to its (log-)middle
        p = min((q for q in pts if a <= q <= b and cache[q] == d),
                key=lambda q: abs(q - 0.5 * (a + b)))
        c, t = spaces[p]
        out.append(CriticalSpace(d, 10**p, 10**a, 10**b, c, t))
    return sorted(out, key=lambda s: -s.dim)


__all__ = [
    "CriticalSpace",
    "approximate_cokernel",
    "critical_space",
    "critical_spaces",
    "left_singular",
    "merge_subspaces",
    "orthogonal_complement",
    "principal_angles",
    "slerp",
    "small_singular_subspaces",
]
