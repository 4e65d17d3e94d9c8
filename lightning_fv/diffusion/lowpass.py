"""Ideal low-pass filter in the Fourier domain (``equidiff-invariant-sets-thesis`` App. .4.1).

Eq. 3: ``F_c(x) = IFFT(H_c · FFT(x))`` where the mask ``H_c`` keeps the spatial frequencies
whose radius is at most the relative cutoff ``c`` and removes the rest (an "ideal", i.e.
brick-wall, filter). The thesis uses it twice: as the filter ``F`` inside the dual loss of
Algorithm 1 (App. .1, lines 16–19) and in the spectral sweep of App. .4.2 (cutoffs 0.1…0.9).

Convention (a choice; the thesis does not define the frequency unit): the radius of the
frequency ``(f_y, f_x)`` (cycles per pixel, ``fftfreq``) is ``sqrt(f_y² + f_x²)``, divided by
the largest radius present on the ``H × W`` grid, so ``c = 1`` keeps every frequency (the
identity) and ``c → 0`` keeps only the mean. The mask is symmetric under ``f → −f``, so the
filtered image is real and the filter is a linear orthogonal projection.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["lowpass", "lowpass_mask"]


def _check_cutoff(cutoff: float) -> float:
    c = float(cutoff)
    if not 0.0 < c <= 1.0:
        raise ValueError(f"relative cutoff must be in (0, 1] (1 = identity), got {cutoff!r}")
    return c


def lowpass_mask(height: int, width: int, cutoff: float,
                 device: torch.device | str | None = None) -> Tensor:
    """Ideal low-pass mask ``H_c`` ``(height, width // 2 + 1)`` (float 0/1) on the ``rfft2``
    frequency grid: 1 where the normalized radial frequency is ``≤ cutoff`` (App. .4, Eq. 3)."""
    c = _check_cutoff(cutoff)
    if height < 1 or width < 1:
        raise ValueError(f"image size must be positive, got {(height, width)}")
    fy = torch.fft.fftfreq(height, device=device, dtype=torch.float64)
    fx = torch.fft.rfftfreq(width, device=device, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    rmax = float(torch.sqrt(fy.abs().max() ** 2 + fx.abs().max() ** 2))
    if rmax == 0.0:  # a 1×1 image has only the mean
        return torch.ones_like(radius, dtype=torch.float32)
    return (radius <= c * rmax * (1 + 1e-9)).to(torch.float32)


def lowpass(images: Tensor, cutoff: float) -> Tensor:
    """Ideal low-pass filtered ``images`` ``(..., H, W)`` (same shape and dtype), Eq. 3 of
    thesis App. .4.1, with relative cutoff ``cutoff ∈ (0, 1]`` (1 = identity).

    Differentiable (it is linear); float16/bfloat16 inputs are filtered in float32.
    """
    c = _check_cutoff(cutoff)
    if images.dim() < 2:
        raise ValueError(f"expected images with shape (..., H, W), got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    x = images.float() if images.dtype in (torch.float16, torch.bfloat16) else images
    mask = lowpass_mask(h, w, c, device=images.device)
    spec = torch.fft.rfft2(x) * mask
    return torch.fft.irfft2(spec, s=(h, w)).to(images.dtype)
