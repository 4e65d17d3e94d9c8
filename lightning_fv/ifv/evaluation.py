"""Evaluation of Grad-IFV (§3.4, §3.5, Fig. 2): angular distances, the coefficients α_j,
projections onto the critical space, and re-optimization followed by SSIM.

- :func:`angular_distance`: ``180/π · min{cos⁻¹(−xᵀx*), cos⁻¹(xᵀx*)}`` degrees (§3.4),
  sign-invariant, for unit-normalized inputs.
- :func:`alpha_coefficients`: ``x_i = Σ_j c_ij v_ij`` over the left-singular vectors of
  ``Z_k(y⁽ⁱ⁾) Dy⁽ⁱ⁾`` ordered by increasing singular value; ``α_j = Σ_i c_ij²/n`` (§3.5).
- :func:`projected_target` / :func:`critical_fraction`: the ideal prediction for a
  critical space ``C`` (§2.2) and the fraction of ``x`` in ``Z_k(y)⁻¹C`` (Fig. 2).
- :func:`reoptimize` / :func:`reoptimization_ssim`: start feature visualization at a
  realization, optimize for another objective (Adam, 500 steps in §3.4) and compare before
  and after with SSIM (Wang et al. 2004); SSIM < 0.7 marks an unstable sample (S4).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from lightning_fv.ifv.gradifv import _as_gram, substitution_basis, z_matrix, z_matrix_inverse
from lightning_fv.optvis.objectives import cosine_power
from lightning_fv.optvis.render import render

SSIM_THRESHOLD = 0.7


def angular_distance(a: Tensor, b: Tensor) -> Tensor:
    """Sign-invariant angle in degrees between rows of ``a`` and ``b`` ``(B, n)`` (or
    ``(n,)``), in [0, 90] (§3.4)."""
    a, b = a.double(), b.double()
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"vectors of different lengths: {a.shape[-1]} vs {b.shape[-1]}")
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-300)
    return torch.rad2deg(torch.arccos(cos.abs().clamp(0, 1)))


def singular_coefficients(x: Tensor, y: Tensor, jacobian: Tensor | None = None, *,
                          gram: Tensor | None = None, k: float = 2.0) -> Tensor:
    """``c`` ``(B, n_f)``: coefficients of the targets ``x`` ``(B, n_f)`` in the left-singular
    vectors of ``Z_k(y) Dy`` ordered by increasing singular value (§3.5)."""
    g = _as_gram(jacobian, gram)
    z = z_matrix(y.double().to(g.device), k)
    zg = z @ g @ z
    _, vecs = torch.linalg.eigh(0.5 * (zg + zg.transpose(1, 2)))  # ascending
    xn = x.double().to(g.device)
    xn = xn / xn.norm(dim=-1, keepdim=True)
    return (vecs.transpose(1, 2) @ xn.unsqueeze(-1)).squeeze(-1)


def alpha_coefficients(x: Tensor, y: Tensor, jacobian: Tensor | None = None, *,
                       gram: Tensor | None = None, k: float = 2.0) -> Tensor:
    """``α_j = Σ_i c_ij² / n`` ``(n_f,)`` (§3.5, Fig. 2/3): how much the j-th left-singular
    vector (by increasing singular value) contributes to the targets; ``Σ_j α_j = 1`` and
    Grad-IFV is accurate when ``α_1 ≈ 1``."""
    return singular_coefficients(x, y, jacobian, gram=gram, k=k).pow(2).mean(0)


def projected_target(x: Tensor, y: Tensor, k: float, critical: Tensor) -> Tensor:
    """The ideal prediction for critical space ``C`` (§2.2): the normalized
    ``Z_k(y)⁻¹ C_M C_Mᵀ Z_k(y) x`` ``(B, n_f)`` (``critical`` ``(n_f, dim C)``)."""
    y = y.double()
    cm, _ = torch.linalg.qr(critical.double().to(y.device))
    zx = z_matrix(y, k) @ x.double().to(y.device).unsqueeze(-1)
    p = (z_matrix_inverse(y, k) @ (cm @ (cm.T @ zx))).squeeze(-1)
    return p / p.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def critical_fraction(x: Tensor, y: Tensor, k: float, critical: Tensor) -> Tensor:
    """``‖v‖/(‖v‖ + ‖w‖)`` ``(B,)`` for ``x = v + w``, ``v ∈ Z_k(y)⁻¹C``,
    ``w ⊥ Z_k(y)⁻¹C`` (Fig. 2 point size)."""
    u = substitution_basis(y, k, critical)
    xd = x.double().to(u.device).unsqueeze(-1)
    v = (u @ (u.transpose(1, 2) @ xd)).squeeze(-1)
    w = xd.squeeze(-1) - v
    return v.norm(dim=-1) / (v.norm(dim=-1) + w.norm(dim=-1)).clamp_min(1e-300)


def reoptimize(
    model: nn.Module,
    layer: str,
    images: Tensor,
    objectives: Tensor,
    *,
    k: float = 2.0,
    steps: int = 500,
    aggregation: str = "maxpool_mean",
    param: dict | None = None,
    normalize: nn.Module | tuple | None = None,
    lr: float = 0.05,
    redirect_relu_steps: int = 16,
    progress: Callable[[int, int], None] | None = None,
) -> Tensor:
    """Re-optimize realizations ``images`` ``(B, 3, H, W)`` in [0, 1] for the cosine-power
    objectives ``objectives`` ``(B, n_f)`` (one per image) with Adam for ``steps`` steps,
    starting exactly at the images (§3.4). ``param`` are :class:`ImageParam` keywords
    (default: the paper's P_rgb, sigmoid pixels); no transforms. ``redirect_relu_steps``
    is the redirected-ReLU warm-up of :func:`~lightning_fv.optvis.render.render` (16, the
    ``"lucid"`` preset, by default; the IFV paper's optimizer has none: pass 0 for it).
    ``progress(step, steps)`` is called after every step. Returns ``(B, 3, H, W)``."""
    kw = dict(fft=False, decorrelate=False, output="sigmoid") if param is None else dict(param)
    res = render(model, cosine_power(layer, objectives.float(), k, aggregation),
                 param=kw, transforms=None, thresholds=(steps,), init_images=images,
                 normalize=normalize, redirect_relu_steps=redirect_relu_steps,
                 progress=progress if progress is not None else False,
                 optimizer=lambda p: torch.optim.Adam(p, lr=lr))
    return res.images[steps]


def ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM (Wang et al. 2004; torchmetrics, Gaussian 11×11 window) per image ``(B,)`` of
    ``a``, ``b`` ``(B, C, H, W)`` in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if a.shape != b.shape:
        raise ValueError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    k = 11 if min(a.shape[-2:]) >= 11 else (min(a.shape[-2:]) // 2) * 2 - 1
    return structural_similarity_index_measure(
        a.float(), b.float(), data_range=1.0, reduction="none", kernel_size=max(k, 3))


def reoptimization_ssim(model: nn.Module, layer: str, images: Tensor, objectives: Tensor,
                        **kwargs: object) -> Tensor:
    """SSIM ``(B,)`` between realizations and their re-optimization for ``objectives``
    (§3.4); values below :data:`SSIM_THRESHOLD` (0.7) mark unstable samples.
    ``kwargs`` go to :func:`reoptimize`."""
    after = reoptimize(model, layer, images, objectives, **kwargs)  # type: ignore[arg-type]
    return ssim(images.cpu(), after.cpu())


def polynomial_angle(c0: Tensor) -> Tensor:
    """``90·(1 − c₀²)`` degrees: the degree-two approximation of the angle between ``x``
    and ``x*`` from ``c₀ = xᵀx*`` (§3.5)."""
    return 90.0 * (1 - c0.double() ** 2)


def random_unit_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Uniform random unit vectors shaped like ``x`` ``(B, n)``."""
    r = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    return (r / r.norm(dim=-1, keepdim=True)).to(x.dtype)


__all__ = [
    "SSIM_THRESHOLD",
    "alpha_coefficients",
    "angular_distance",
    "critical_fraction",
    "polynomial_angle",
    "projected_target",
    "random_unit_like",
    "reoptimization_ssim",
    "reoptimize",
    "singular_coefficients",
    "ssim",
]
