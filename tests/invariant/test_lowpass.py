"""Ideal low-pass filter of thesis App. .4 (Eq. 3)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lightning_fv.diffusion.lowpass import lowpass, lowpass_mask


def _numpy_lowpass(x: np.ndarray, cutoff: float) -> np.ndarray:
    """Independent reference: full complex FFT, radial mask normalized by the largest radius."""
    h, w = x.shape[-2:]
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    r = np.sqrt(fy ** 2 + fx ** 2)
    mask = r <= cutoff * r.max() * (1 + 1e-9)
    return np.real(np.fft.ifft2(np.fft.fft2(x) * mask))


@pytest.mark.parametrize("shape", [(2, 3, 16, 16), (1, 3, 9, 12)])
def test_cutoff_one_is_the_identity(shape: tuple[int, ...]) -> None:
    x = torch.rand(*shape)
    assert torch.all(lowpass_mask(*shape[-2:], 1.0) == 1)
    torch.testing.assert_close(lowpass(x, 1.0), x, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cutoff", [0.1, 0.35, 0.7])
def test_output_has_no_energy_above_the_cutoff_and_keeps_the_rest(cutoff: float) -> None:
    x = torch.rand(2, 3, 16, 14, dtype=torch.float64)
    y = lowpass(x, cutoff)
    mask = lowpass_mask(16, 14, cutoff).bool()
    spec_x, spec_y = torch.fft.rfft2(x), torch.fft.rfft2(y)
    assert spec_y[..., ~mask].abs().max() < 1e-10
    torch.testing.assert_close(spec_y[..., mask], spec_x[..., mask])
    np.testing.assert_allclose(y.numpy(), _numpy_lowpass(x.numpy(), cutoff), atol=1e-10)


def test_filter_is_linear_and_idempotent() -> None:
    a, b = torch.rand(2, 3, 12, 12, dtype=torch.float64), torch.rand(2, 3, 12, 12,
                                                                     dtype=torch.float64)
    f = lambda v: lowpass(v, 0.4)  # noqa: E731
    torch.testing.assert_close(f(2.5 * a - 0.7 * b), 2.5 * f(a) - 0.7 * f(b))
    torch.testing.assert_close(f(f(a)), f(a))


def test_cosine_passes_below_and_is_removed_above_its_frequency() -> None:
    n = 16
    col = torch.arange(n, dtype=torch.float64)
    img = torch.cos(2 * math.pi * 2 * col / n).expand(1, 1, n, n)  # f_x = 2/16 cycles/pixel
    rel = (2 / n) / math.sqrt(0.5 ** 2 + 0.5 ** 2)                 # ≈ 0.177 of the corner
    torch.testing.assert_close(lowpass(img, rel + 0.02), img)
    assert lowpass(img, rel - 0.02).abs().max() < 1e-12


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5])
def test_bad_cutoff_raises_naming_the_value(bad: float) -> None:
    with pytest.raises(ValueError, match=str(bad)):
        lowpass(torch.rand(1, 3, 8, 8), bad)
