"""The ideal low-pass filter (thesis App. .4.1, Eq. 3) against a numpy full-grid FFT, for
every input rank, odd sizes, half precision and the degenerate sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lightning_fv.diffusion.lowpass import lowpass, lowpass_mask


def _numpy_lowpass(x: np.ndarray, c: float) -> np.ndarray:
    """Eq. 3 on the full (not half) frequency grid, radius / largest radius ≤ c."""
    h, w = x.shape[-2:]
    fy, fx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    radius = np.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    rmax = np.sqrt(np.abs(fy).max() ** 2 + np.abs(fx).max() ** 2)
    mask = radius <= c * rmax * (1 + 1e-9)
    return np.real(np.fft.ifft2(np.fft.fft2(x) * mask))


@pytest.mark.parametrize("shape", [(7, 9), (3, 7, 9), (2, 3, 8, 5)])
@pytest.mark.parametrize("cutoff", [0.3, 0.65])
def test_lowpass_equals_numpy_for_every_rank_and_odd_sizes(shape, cutoff) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = lowpass(x, cutoff)
    assert got.shape == x.shape and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _numpy_lowpass(x.numpy(), cutoff), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_filtered_in_float32_and_returned_in_its_dtype(dtype) -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = lowpass(x, 0.4)
    assert got.dtype == dtype
    ref = torch.from_numpy(_numpy_lowpass(x.double().numpy(), 0.4)).to(dtype)
    torch.testing.assert_close(got, ref, atol=0, rtol=0)


def test_mask_keeps_the_disc_of_the_relative_cutoff_and_degenerate_sizes() -> None:
    m = lowpass_mask(8, 8, 0.5)
    assert m.shape == (8, 5) and m.dtype == torch.float32
    # rmax = √(0.5² + 0.5²); (f_y, f_x) = (0.25, 0.25) sits exactly on 0.5·rmax and is kept
    assert m[2, 2] == 1 and m[2, 3] == 0 and m[0, 2] == 1 and m[0, 3] == 0
    assert int(m.sum()) == 1 + 4 + 2 * 4 + 2  # 15 of the 40 half-plane frequencies
    one = lowpass_mask(1, 1, 0.1)  # a 1×1 image has only the mean
    assert one.dtype == torch.float32 and one.tolist() == [[1.0]]
    assert lowpass_mask(1, 6, 0.2).tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert lowpass_mask(5, 1, 1.0).tolist() == [[1.0]] * 5
    for h, w in ((0, 4), (4, 0), (0, 0)):
        with pytest.raises(ValueError, match="positive"):
            lowpass_mask(h, w, 0.5)
    with pytest.raises(ValueError, match=r"\(\.\.\., H, W\)"):
        lowpass(torch.ones(5), 0.5)
