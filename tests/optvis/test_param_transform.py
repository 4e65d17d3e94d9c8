"""Parameterizations invert exactly; transforms are reproducible and match closed forms."""

from __future__ import annotations

import itertools

import pytest
import torch

from lightning_fv.optvis.param import ImageParam, color_matrix_from_images
from lightning_fv.optvis.transform import (
    TransformChain,
    center_crop,
    jitter,
    pad,
    random_rotate,
    random_scale,
    standard_transforms,
)


@pytest.mark.parametrize("fft,decorrelate,output",
                         list(itertools.product([True, False], [True, False],
                                                ["sigmoid", "clamp", "none"])))
def test_parameterization_starts_exactly_at_given_images(fft, decorrelate, output):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 15, 22) * 0.98 + 0.01
    p = ImageParam.from_images(x, fft=fft, decorrelate=decorrelate, output=output)
    assert torch.allclose(p(), x, atol=1e-5)
    assert p().shape == x.shape


def test_fourier_scaling_is_one_over_frequency():
    p = ImageParam(1, 3, 8, 8, decorrelate=False, output="none", decay_power=1.0)
    # frequency (0, 1/8) along the width has scale 8; DC is clamped to 1/max(h, w) → 8
    assert p.spectrum_scale[0, 1].item() == pytest.approx(8.0)
    assert p.spectrum_scale[2, 0].item() == pytest.approx(4.0)  # fy = 2/8
    assert p.spectrum_scale[0, 0].item() == pytest.approx(8.0)


def test_color_matrix_from_images_is_a_square_root_of_the_rgb_covariance():
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.2, 0.0], [0.5, 1.0, 0.1], [0.3, 0.4, 1.0]])
    x = torch.einsum("dc,nchw->ndhw", mix, torch.rand(4, 3, 10, 10))
    m = color_matrix_from_images(x)
    px = x.permute(0, 2, 3, 1).reshape(-1, 3).double()
    cov = torch.cov(px.T)
    assert torch.allclose((m @ m.T).double(), cov, atol=1e-5)


def test_generators_make_initial_noise_independent_of_batch_position():
    gs = [torch.Generator().manual_seed(s) for s in (3, 7)]
    both = ImageParam(2, 3, 8, 8, generators=gs)
    alone = ImageParam(1, 3, 8, 8, generators=[torch.Generator().manual_seed(7)])
    assert torch.equal(both.raw[1], alone.raw[0])


def test_bad_parameterization_arguments_raise():
    with pytest.raises(ValueError, match="unknown output 'tanh'"):
        ImageParam(1, 3, 8, output="tanh")
    with pytest.raises(ValueError, match="needs 3 channels, got 1"):
        ImageParam(1, 1, 8)
    p = ImageParam(1, 3, 8)
    with pytest.raises(ValueError, match=r"expected images of shape \(1, 3, 8, 8\)"):
        p.set_images(torch.rand(2, 3, 8, 8))


def test_jitter_is_an_exact_integer_crop():
    x = torch.rand(2, 3, 20, 24)
    u = torch.tensor([[0.3, 0.5], [0.9, 0.0]])  # offsets (x, y) = (1, 2) and (4, 0)
    y = TransformChain([jitter(5)])(x, u)
    assert y.shape == (2, 3, 15, 19)
    assert torch.allclose(y[0], x[0, :, 2:17, 1:20], atol=1e-6)
    assert torch.allclose(y[1], x[1, :, 0:15, 4:23], atol=1e-6)


def test_pad_constant_and_rotation_by_90_degrees():
    x = torch.rand(1, 3, 6, 6)
    y = TransformChain([pad(2, value=0.5)])(x, torch.zeros(1, 0))
    assert y.shape == (1, 3, 10, 10)
    assert torch.allclose(y[..., 2:-2, 2:-2], x, atol=1e-6)
    assert torch.allclose(y[..., 0, :], torch.full_like(y[..., 0, :], 0.5))
    r = TransformChain([random_rotate([90])])(x, torch.zeros(1, 1))
    assert torch.allclose(r, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5)


def test_scale_is_a_zoom_about_the_centre_and_crop_is_central():
    x = torch.rand(1, 1, 9, 9)
    y = TransformChain([random_scale([1.0])])(x, torch.zeros(1, 1))
    assert torch.allclose(y, x, atol=1e-6)
    z = TransformChain([random_scale([2.0])])(x, torch.zeros(1, 1))
    assert z[0, 0, 4, 4].item() == pytest.approx(x[0, 0, 4, 4].item(), abs=1e-6)
    c = TransformChain([center_crop(5)])(x, torch.zeros(1, 0))
    assert torch.allclose(c, x[..., 2:7, 2:7], atol=1e-6)


def test_same_generator_gives_identical_transforms_and_they_are_differentiable():
    chain = TransformChain(standard_transforms())
    g1 = [torch.Generator().manual_seed(5)]
    g2 = [torch.Generator().manual_seed(5)]
    u1, u2 = chain.draw(g1, 4), chain.draw(g2, 4)
    assert torch.equal(u1, u2)
    x = torch.rand(1, 3, 32, 32, requires_grad=True)
    y = chain(x, u1[0])
    assert y.shape == (1, 3, 32 + 24 - 8 - 4, 32 + 24 - 8 - 4)
    y.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert torch.equal(chain(x, u1[2]), chain(x, u2[2]))


def test_transform_arguments_are_validated():
    with pytest.raises(ValueError, match="jitter d must be >= 1"):
        jitter(0)
    with pytest.raises(ValueError, match="unknown pad mode 'wrap'"):
        pad(2, mode="wrap")
    with pytest.raises(ValueError, match="empty"):
        TransformChain([jitter(9)])(torch.rand(1, 3, 8, 8), torch.zeros(1, 2))
