"""Grad-IFV evaluation helpers against closed forms and independent computations:
``critical_fraction``, ``polynomial_angle``, ``random_unit_like``, ``reoptimization_ssim``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity
from torch import nn

from lightning_fv.ifv import critical_fraction, polynomial_angle, random_unit_like
from lightning_fv.ifv.evaluation import reoptimization_ssim, ssim
from lightning_fv.optvis.objectives import aggregate, cosine_power_value


def test_critical_fraction_matches_the_closed_form_for_a_one_dimensional_space() -> None:
    """y = e₁, C = span(e₁ + e₂): Z_k(y)⁻¹ = Id + k e₁e₁ᵀ maps C to span((1+k, 1, 0)), so
    for k = 2, u = (3, 1, 0)/√10 and x = e₁ splits into ‖v‖ = 3/√10, ‖w‖ = 1/√10."""
    y = torch.tensor([[1.0, 0.0, 0.0]]).expand(4, 3)
    c = torch.tensor([[1.0], [1.0], [0.0]])
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [3.0, 1.0, 0.0]])
    got = critical_fraction(x, y, 2.0, c)
    torch.testing.assert_close(got, torch.tensor([0.75, 0.25, 0.0, 1.0], dtype=torch.float64))
    # k = 0 (Z = Id): the space is C itself, u = (1, 1, 0)/√2
    got0 = critical_fraction(x[:1], y[:1], 0.0, c)
    assert got0.item() == pytest.approx(0.5)
    # no constraint (C = ℝ³) would give 1; a 2-d C containing x gives 1 as well
    full = critical_fraction(x, y, 2.0, torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(full, torch.tensor([1.0, 1.0, 0.0, 1.0], dtype=torch.float64))


def test_polynomial_angle_is_90_times_one_minus_c0_squared() -> None:
    c0 = torch.tensor([1.0, -1.0, 0.0, 0.5, 0.9])
    got = polynomial_angle(c0)
    assert got.dtype == torch.float64
    assert got.tolist() == pytest.approx([0.0, 0.0, 90.0, 67.5, 90 * (1 - 0.81)])
    # the degree-two approximation of arccos agrees with the true angle at both ends
    for c in (0.0, 1.0):
        assert polynomial_angle(torch.tensor(c)).item() == pytest.approx(
            math.degrees(math.acos(c)), abs=1e-9)


def test_random_unit_like_gives_seeded_uniform_unit_vectors() -> None:
    x = torch.zeros(20_000, 5, dtype=torch.float32)
    a = random_unit_like(x, torch.Generator().manual_seed(0))
    b = random_unit_like(x, torch.Generator().manual_seed(0))
    assert a.dtype == torch.float32 and a.shape == x.shape and torch.equal(a, b)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(20_000))
    # uniform on the sphere S⁴: each coordinate has mean 0 and E[a_i²] = 1/5; E[a_i a_j] = 0
    second = (a.double().T @ a.double()) / len(a)
    torch.testing.assert_close(second, torch.eye(5, dtype=torch.float64) / 5, atol=6e-3,
                               rtol=0)
    assert a.double().mean(0).abs().max() < 0.01


def test_ssim_of_constant_images_is_the_luminance_term_and_matches_skimage() -> None:
    # constant images: SSIM = (2μaμb + C1)/(μa² + μb² + C1), C1 = (0.01·L)², L = 1
    # dark images, where C1 matters: 0.0021/0.003 = 0.7 (0.6897 without C1); float32 moments
    a, b = torch.full((1, 3, 16, 16), 0.02), torch.full((1, 3, 16, 16), 0.05)
    assert ssim(a, b).item() == pytest.approx(0.7, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    z = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    ref = [structural_similarity(x[i].numpy(), z[i].numpy(), channel_axis=0, data_range=1.0,
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
           for i in range(2)]
    np.testing.assert_allclose(ssim(x, z).numpy(), ref, atol=3e-3)  # borders differ a little


class _SmoothNet(nn.Module):
    """conv → softplus → conv: no ReLU, so rendering has no redirected-ReLU phase."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.Softplus()
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.act(self.conv1(x)))


def test_reoptimization_ssim_is_ssim_before_and_after_adam_on_the_cosine_power() -> None:
    torch.manual_seed(0)
    net = _SmoothNet().eval()
    g = torch.Generator().manual_seed(1)
    images = 0.15 + 0.7 * torch.rand(2, 3, 16, 16, generator=g)
    objectives = torch.nn.functional.normalize(torch.randn(2, 4, generator=g), dim=1)
    k, steps, lr = 2.0, 30, 0.05
    got = reoptimization_ssim(net, "conv2", images, objectives, k=k, steps=steps, lr=lr)
    # the same re-optimization written out: Adam on the sigmoid's pre-image, §3.4
    raw = torch.logit(images).clone().requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        y = aggregate(net(torch.sigmoid(raw)), "maxpool_mean")
        (-cosine_power_value(objectives, y, k).sum()).backward()
        opt.step()
    after = torch.sigmoid(raw).detach()
    # ssim itself is checked against skimage and a closed form above
    torch.testing.assert_close(got, ssim(images, after), atol=1e-5, rtol=0)
    assert (got < 0.95).all()  # the images did move
    unchanged = reoptimization_ssim(net, "conv2", images, objectives, k=k, steps=0)
    torch.testing.assert_close(unchanged, torch.ones(2), atol=1e-4, rtol=0)
