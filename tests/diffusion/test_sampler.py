"""Flow-matching sampler: closed-form Gaussian velocity, torchdiffeq, guidance rules, gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fv.diffusion import (
    LightningDiT,
    euler_step,
    guided_velocity,
    heun_step,
    sample,
    shift_timesteps,
    time_grid,
)


class GaussianVelocity(nn.Module):
    """Exact velocity of the linear path for data ``x₁ ~ N(μ, σ²)`` (per element):

    ``v(x, t) = μ + (tσ² − (1 − t)) / (t²σ² + (1 − t)²) · (x − tμ)``; the flow maps
    ``x₀`` to ``μ + σ·x₀`` exactly. The label shifts μ by ``y`` (null class: no shift).
    """

    null_class = 99

    def __init__(self, mu: float, sigma: float) -> None:
        super().__init__()
        self.mu, self.sigma = mu, sigma
        self.scale = nn.Parameter(torch.ones(()))  # a parameter, to check freezing

    def forward(self, x, t, y):
        t = t.view(-1, 1, 1, 1).to(x.dtype)
        shift = torch.where(y == self.null_class, 0, y).view(-1, 1, 1, 1).to(x.dtype)
        mu = self.mu + shift
        s2 = self.sigma**2
        return self.scale * (mu + (t * s2 - (1 - t)) / (t * t * s2 + (1 - t) ** 2) * (x - t * mu))


def test_time_grid_and_shift_formula():
    ts = time_grid(4, shift=0.3)
    t = torch.linspace(0, 1, 5)
    torch.testing.assert_close(ts, 0.3 * t / (1 + (0.3 - 1) * t))
    assert ts[0] == 0 and ts[-1] == 1
    assert torch.equal(time_grid(4), t) and torch.equal(shift_timesteps(t, 1.0), t)
    with pytest.raises(ValueError, match="timestep shift must be > 0"):
        time_grid(4, shift=0.0)
    with pytest.raises(ValueError, match="num_steps"):
        time_grid(0)


def test_euler_on_gaussian_field_lands_on_target_distribution():
    torch.manual_seed(0)
    f = GaussianVelocity(mu=1.5, sigma=0.5)
    z = torch.randn(512, 2, 4, 4)
    y = torch.zeros(512, dtype=torch.long)
    out = sample(f, z, y, num_steps=400, shift=0.3)
    # per-sample: the exact flow map is x0 -> mu + sigma x0
    err = (out - (1.5 + 0.5 * z)).abs().max()
    assert err < 0.03
    assert abs(out.mean() - 1.5) < 0.01
    assert abs(out.std() - 0.5) < 0.01
    # Euler is first order: halving the step halves the error
    err2 = (sample(f, z, y, num_steps=800, shift=0.3) - (1.5 + 0.5 * z)).abs().max()
    assert 0.4 < err2 / err < 0.6


def test_heun_is_more_accurate_than_euler_at_equal_steps():
    f = GaussianVelocity(mu=-1.0, sigma=2.0)
    z = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(64, dtype=torch.long)
    exact = -1.0 + 2.0 * z
    err_e = (sample(f, z, y, num_steps=20, method="euler") - exact).abs().max()
    err_h = (sample(f, z, y, num_steps=20, method="heun") - exact).abs().max()
    assert err_h < err_e / 10


@pytest.mark.parametrize("shift", [None, 0.3])
def test_euler_equals_torchdiffeq_on_the_same_grid(shift):
    from torchdiffeq import odeint

    f = GaussianVelocity(mu=0.7, sigma=1.3)
    z = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    y = torch.zeros(8, dtype=torch.long)
    ours = sample(f, z, y, num_steps=200, shift=shift)
    ts = time_grid(200, shift).double()
    ref = odeint(lambda t, x: f(x, t.expand(x.shape[0]), y), z, ts, method="euler")[-1]
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)
    # and many-step Euler agrees with an adaptive high-order solve
    fine = odeint(lambda t, x: f(x, t.expand(x.shape[0]), y), z, ts[[0, -1]],
                  method="dopri5", atol=1e-10, rtol=1e-10)[-1]
    assert (ours - fine).abs().max() < 0.03


def test_heun_step_equals_torchdiffeq_heun2():
    from torchdiffeq import odeint

    f = GaussianVelocity(mu=0.2, sigma=0.8)
    z = torch.randn(4, 1, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.zeros(4, dtype=torch.long)
    ts = time_grid(10, 0.5).double()
    ref = odeint(lambda t, x: f(x, t.expand(x.shape[0]), y), z, ts, method="heun2")[-1]
    ours = sample(f, z, y, num_steps=10, shift=0.5, method="heun")
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=1e-10)


class LabelConstant(nn.Module):
    """``v = y`` on every channel (null class 9 → −1), to read off guidance arithmetic."""

    null_class = 9

    def forward(self, x, t, y):
        val = torch.where(y == self.null_class, -1.0, y.float())
        return val.view(-1, 1, 1, 1).expand_as(x).clone()


def test_guidance_applies_to_first_channels_only():
    m = LabelConstant()
    x = torch.zeros(2, 5, 2, 2)
    y = torch.tensor([2, 4])
    t = torch.full((2,), 0.5)
    v = guided_velocity(m, x, t, y, cfg_scale=3.0, guidance_channels=3)
    guided = -1 + 3.0 * (y.float() + 1)  # uncond + s (cond − uncond)
    assert torch.equal(v[:, :3], guided.view(-1, 1, 1, 1).expand(2, 3, 2, 2))
    assert torch.equal(v[:, 3:], y.float().view(-1, 1, 1, 1).expand(2, 2, 2, 2))
    v_all = guided_velocity(m, x, t, y, cfg_scale=3.0, guidance_channels=None)
    assert torch.equal(v_all, guided.view(-1, 1, 1, 1).expand(2, 5, 2, 2))
    # fewer channels than the rule: all are guided
    v_small = guided_velocity(m, x[:, :2], t, y, cfg_scale=3.0, guidance_channels=3)
    assert torch.equal(v_small, guided.view(-1, 1, 1, 1).expand(2, 2, 2, 2))
    # cfg_scale ≤ 1: conditional only (one model call, no null branch)
    assert torch.equal(guided_velocity(m, x, t, y, cfg_scale=1.0), m(x, t, y))


def test_guidance_interval_switches_off_guidance_below_start():
    m = LabelConstant()
    x = torch.zeros(3, 4, 1, 1)
    y = torch.tensor([1, 1, 1])
    t = torch.tensor([0.05, 0.11, 0.9])
    v = guided_velocity(m, x, t, y, cfg_scale=2.0, cfg_interval_start=0.11, guidance_channels=3)
    assert v[0, :, 0, 0].tolist() == [1.0, 1.0, 1.0, 1.0]  # t < 0.11: conditional
    assert v[1, :, 0, 0].tolist() == [3.0, 3.0, 3.0, 1.0]  # -1 + 2·(1 + 1)
    assert v[2, :, 0, 0].tolist() == [3.0, 3.0, 3.0, 1.0]


def test_unconditional_sampling_uses_the_null_class():
    f = GaussianVelocity(mu=2.0, sigma=1.0)
    z = torch.randn(4, 1, 2, 2)
    out = sample(f, z, None, num_steps=20, method="heun")
    torch.testing.assert_close(out, 2.0 + z, atol=2e-3, rtol=0)


def _tiny_dit(seed=0):
    torch.manual_seed(seed)
    m = LightningDiT(input_size=4, patch_size=2, in_channels=4, hidden_size=32, depth=2,
                     num_heads=2, num_classes=5, use_swiglu=True, use_rope=True, use_rmsnorm=True)
    for p in m.parameters():  # leave the zero init so the velocity is non-trivial
        if p.requires_grad:
            p.data.add_(0.05 * torch.randn_like(p))
    return m


def test_gradient_reaches_z_through_the_sampler_with_and_without_checkpointing():
    m = _tiny_dit()
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([1, 3])
    grads = []
    for ckpt in (False, True):
        zz = z.clone().requires_grad_(True)
        out = sample(m, zz, y, num_steps=6, shift=0.3, cfg_scale=2.0, cfg_interval_start=0.1,
                     checkpoint=ckpt, enable_grad=True)
        out.square().sum().backward()
        grads.append(zz.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-6)
    # parameters were frozen during sampling and are restored afterwards
    assert all(p.grad is None for p in m.parameters())
    assert m.blocks[0].attn.qkv.weight.requires_grad and m.training


def test_gradient_through_gaussian_flow_equals_sigma():
    f = GaussianVelocity(mu=0.3, sigma=0.6)
    z = torch.randn(5, 1, 2, 2, requires_grad=True)
    out = sample(f, z, torch.zeros(5, dtype=torch.long), num_steps=50, method="heun",
                 checkpoint=True, enable_grad=True)
    out.sum().backward()
    torch.testing.assert_close(z.grad, torch.full_like(z, 0.6), atol=2e-3, rtol=0)


def test_enable_grad_false_builds_no_graph_and_restores_mode():
    m = _tiny_dit()
    m.train()
    z = torch.randn(1, 4, 4, 4, requires_grad=True)
    out = sample(m, z, torch.tensor([0]), num_steps=2, enable_grad=False)
    assert not out.requires_grad
    assert m.training


def test_sampling_under_bf16_autocast_runs():
    m = _tiny_dit()
    z = torch.randn(2, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sample(m, z, torch.tensor([0, 1]), num_steps=4, cfg_scale=1.5)
    ref = sample(m, z, torch.tensor([0, 1]), num_steps=4, cfg_scale=1.5)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert (out - ref).norm() / ref.norm() < 0.05


def test_step_rules_are_exact_for_constant_velocity():
    x = torch.zeros(2, 1, 1, 1)
    f = lambda x, t: torch.ones_like(x)  # noqa: E731
    assert torch.allclose(euler_step(f, x, 0.25, 0.75), torch.full_like(x, 0.5))
    assert torch.allclose(heun_step(f, x, 0.25, 0.75), torch.full_like(x, 0.5))


def test_bad_arguments_are_named():
    m = _tiny_dit()
    z = torch.randn(2, 4, 4, 4)
    with pytest.raises(ValueError, match="'rk4'"):
        sample(m, z, torch.tensor([0, 1]), method="rk4")
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        sample(m, z, torch.tensor([0]))
