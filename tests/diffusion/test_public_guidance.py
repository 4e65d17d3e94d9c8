"""Classifier-free guidance and the ODE steps of the sampler against hand formulas, with a
model whose conditional and unconditional velocities are known in closed form."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fv.diffusion.sampler import euler_step, guided_velocity, heun_step, velocity_fn


class _Affine(nn.Module):
    """``v(x, t, y) = (1 + y)·x + t``; counts calls and the batch sizes it saw."""

    null_class = 9

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.shape[0])
        return (1 + y.to(x.dtype)).view(-1, 1, 1, 1) * x + t.to(x.dtype).view(-1, 1, 1, 1)


def _reference(x, t, y, s, k, start, null):
    v = lambda lab: (1 + lab).view(-1, 1, 1, 1) * x + t.view(-1, 1, 1, 1)  # noqa: E731
    cond, uncond = v(y.double()), v(torch.full_like(y, null).double())
    out = cond.clone()
    on = (t >= start).view(-1, 1, 1, 1)
    out[:, :k] = torch.where(on, uncond[:, :k] + s * (cond[:, :k] - uncond[:, :k]), cond[:, :k])
    return out


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 2, 2, generator=g, dtype=torch.float64)
    return x, torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64), torch.tensor([0, 3, 1])


def test_guidance_mixes_only_the_first_channels_with_the_null_class(batch) -> None:
    x, t, y = batch
    m = _Affine()
    got = guided_velocity(m, x, t, y, 4.0)  # release: 3 of the 5 channels guided
    torch.testing.assert_close(got, _reference(x, t, y, 4.0, 3, 0.0, 9))
    assert m.batches == [6]  # one batched pass: conditional and unconditional together
    torch.testing.assert_close(guided_velocity(m, x, t, y, 4.0, guidance_channels=None),
                               _reference(x, t, y, 4.0, 5, 0.0, 9))
    torch.testing.assert_close(guided_velocity(m, x, t, y, 4.0, guidance_channels=1),
                               _reference(x, t, y, 4.0, 1, 0.0, 9))
    torch.testing.assert_close(guided_velocity(m, x, t, y, 4.0, guidance_channels=8),
                               _reference(x, t, y, 4.0, 5, 0.0, 9))  # fewer channels: all
    torch.testing.assert_close(guided_velocity(m, x, t, y, 4.0, null_class=2),
                               _reference(x, t, y, 4.0, 3, 0.0, 2))
    with pytest.raises(ValueError, match="guidance_channels"):
        guided_velocity(m, x, t, y, 4.0, guidance_channels=0)


def test_guidance_interval_and_scale_one(batch) -> None:
    x, t, y = batch
    m = _Affine()
    torch.testing.assert_close(guided_velocity(m, x, t, y, 3.0, cfg_interval_start=0.5),
                               _reference(x, t, y, 3.0, 3, 0.5, 9))
    m.batches.clear()
    torch.testing.assert_close(guided_velocity(m, x, t, y, 1.0), _reference(x, t, y, 1.0, 3,
                                                                           0.0, 9))
    assert m.batches == [3]  # s = 1 is the conditional model alone, no second branch


def test_velocity_fn_binds_every_setting(batch) -> None:
    x, t, y = batch
    m = _Affine()
    f = velocity_fn(m, y, 2.5, 0.4, 2, 7)
    torch.testing.assert_close(f(x, t), _reference(x, t, y, 2.5, 2, 0.4, 7))


def test_euler_and_heun_steps_keep_the_latent_dtype_and_accept_float_times() -> None:
    x = torch.tensor([[[[1.0]]], [[[2.0]]]], dtype=torch.bfloat16)
    seen: list[torch.Tensor] = []

    def f(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(t)
        return (z.float() * 2 + t.view(-1, 1, 1, 1)).float()  # a float32 velocity

    e = euler_step(f, x, 0.25, 0.75)
    assert e.dtype == torch.bfloat16 and e.flatten().tolist() == [2.125, 4.125]
    assert seen[0].shape == (2,) and seen[0].dtype == torch.float32
    h = heun_step(f, x, 0.25, 0.75)
    # v1 = 2x + 0.25; x̃ = x + v1/2; v2 = 2x̃ + 0.75; x + (v1 + v2)/4
    ref = [1 + (2.25 + 2 * 2.125 + 0.75) / 4, 2 + (4.25 + 2 * 4.125 + 0.75) / 4]
    assert h.dtype == torch.bfloat16
    assert h.float().flatten().tolist() == pytest.approx(ref, rel=1e-2)


def test_defaults_are_unguided_and_a_model_without_null_class_is_refused(batch) -> None:
    x, t, y = batch
    m = _Affine()
    cond = _reference(x, t, y, 1.0, 3, 0.0, 9)
    torch.testing.assert_close(guided_velocity(m, x, t, y), cond)
    torch.testing.assert_close(velocity_fn(m, y)(x, t), cond)
    assert m.batches == [3, 3]  # the defaults never evaluate an unconditional branch
    torch.testing.assert_close(velocity_fn(m, y, 4.0)(x, t), _reference(x, t, y, 4.0, 3, 0.0, 9))

    class NoNull(nn.Module):
        def forward(self, x, t, y):
            return x

    with pytest.raises(ValueError, match="null class"):
        guided_velocity(NoNull(), x, t, y, 2.0)


def test_time_grid_single_step_and_shift_two() -> None:
    from lightning_fv.diffusion.sampler import time_grid

    assert time_grid(1).tolist() == [0.0, 1.0]
    # s = 2: t ↦ 2t / (1 + t), so 0.5 ↦ 2/3 and 0.25 ↦ 0.4
    torch.testing.assert_close(time_grid(4, shift=2.0),
                               torch.tensor([0.0, 0.4, 2 / 3, 6 / 7, 1.0]))


# ------------------------------------------------ sample() with the closed-form model
# (mutation-testing follow-ups, docs/testing.md §4)


def _euler_reference(z, y, steps, s=1.0, k=3, start=0.0, null=9):
    """Explicit Euler over ``linspace(0, 1, steps + 1)`` with the guided velocity of
    ``_reference`` (times in float32 as the sampler's grid, then float64)."""
    ts = torch.linspace(0.0, 1.0, steps + 1)
    x, traj = z.clone(), [z]
    for i in range(steps):
        t = ts[i].double().expand(z.shape[0])
        dt = (ts[i + 1] - ts[i]).double()
        x = x + dt * _reference(x, t, y, s, k, start, null)
        traj.append(x)
    return x, traj


@pytest.fixture
def latents():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 5, 2, 2, generator=g, dtype=torch.float64) * 0.1, torch.tensor([0, 1])


def test_sample_defaults_are_250_unguided_euler_steps(latents) -> None:
    from lightning_fv.diffusion.sampler import sample

    z, y = latents
    m = _Affine()
    got = sample(m, z, y)
    torch.testing.assert_close(got, _euler_reference(z, y, 250)[0], rtol=1e-10, atol=1e-12)
    assert m.batches == [2] * 250  # one conditional pass per step, no guidance branch


def test_sample_passes_scale_interval_and_channels_to_the_guidance(latents) -> None:
    from lightning_fv.diffusion.sampler import sample

    z, y = latents
    ref = _euler_reference(z, y, 6, s=4.0, k=2, start=0.5)[0]
    got = sample(_Affine(), z, y, num_steps=6, cfg_scale=4.0, cfg_interval_start=0.5,
                 guidance_channels=2)
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    # defaults of the guidance: interval from 0 and the release's 3 channels
    got = sample(_Affine(), z, y, num_steps=6, cfg_scale=4.0)
    torch.testing.assert_close(got, _euler_reference(z, y, 6, s=4.0, k=3)[0], rtol=1e-10,
                               atol=1e-12)


def test_steps_before_the_guidance_interval_run_the_conditional_half_only(latents) -> None:
    """Where a step's times all lie before ``cfg_interval_start`` the guided velocity is the
    conditional one, so the sampler evaluates B latents there instead of 2·B, with the same
    result as guiding every step."""
    from lightning_fv.diffusion.pipeline import release_sampler
    from lightning_fv.diffusion.sampler import sample, time_grid

    z, y = latents
    m = _Affine()
    got = sample(m, z, y, num_steps=6, cfg_scale=4.0, cfg_interval_start=0.5)
    torch.testing.assert_close(got, _euler_reference(z, y, 6, s=4.0, k=3, start=0.5)[0],
                               rtol=1e-10, atol=1e-12)
    assert m.batches == [2, 2, 2, 4, 4, 4]  # t = 0, 1/6, 2/6 < 0.5: conditional only
    # Heun evaluates t_i and t_{i+1}: step 2 (2/6 → 3/6) reaches the interval, so it guides
    m = _Affine()
    f = velocity_fn(m, y, 4.0, 0.5)
    ref, grid = z, time_grid(6)
    for i in range(6):
        ref = heun_step(f, ref, grid[i], grid[i + 1])
    m.batches.clear()
    got = sample(m, z, y, num_steps=6, cfg_scale=4.0, cfg_interval_start=0.5, method="heun")
    torch.testing.assert_close(got, ref, rtol=1e-10, atol=1e-12)
    assert m.batches == [2, 2, 2, 2] + [4] * 8
    # the release's sampler: shift 0.3 puts 81 of its 249 steps before t = 0.125
    cfg = release_sampler()
    m = _Affine()
    sample(m, z, y, num_steps=cfg.num_steps, shift=cfg.shift, cfg_scale=cfg.cfg_scale,
           cfg_interval_start=cfg.cfg_interval_start)
    ts = time_grid(cfg.num_steps, cfg.shift)
    assert m.batches.count(2) == int((ts[:-1] < 0.125).sum()) == 81
    assert m.batches.count(4) == 249 - 81


def test_unconditional_sampling_uses_the_null_class_for_every_sample(latents) -> None:
    from lightning_fv.diffusion.sampler import sample

    z, _ = latents
    z = torch.cat([z, z[:1]])  # 3 samples, 5 channels: the label count is the batch size
    null = torch.full((3,), 9)
    got = sample(_Affine(), z, None, num_steps=4)
    torch.testing.assert_close(got, _euler_reference(z, null, 4)[0], rtol=1e-10, atol=1e-12)

    class NoNull(nn.Module):
        def forward(self, x, t, y):
            return x

    with pytest.raises(ValueError, match="needs a model with `null_class`"):
        sample(NoNull(), z, None, num_steps=1)


def test_return_trajectory_lists_every_iterate_from_the_start(latents) -> None:
    from lightning_fv.diffusion.sampler import sample

    z, y = latents
    x, traj = sample(_Affine(), z, y, num_steps=3, return_trajectory=True)
    _, ref = _euler_reference(z, y, 3)
    assert len(traj) == 4 and traj[0] is z and traj[-1] is x
    for a, b in zip(traj, ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert isinstance(sample(_Affine(), z, y, num_steps=3), torch.Tensor)


class _ScaledAffine(_Affine):
    """``a·((1 + y)·x + t)`` with a trainable scalar ``a``."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))

    def forward(self, x, t, y):
        return self.a * super().forward(x, t, y)


def test_checkpointing_recomputes_each_step_in_backward_and_gives_the_same_gradients(
        latents) -> None:
    from lightning_fv.diffusion.sampler import sample

    z, y = latents
    grads, calls = {}, {}
    for ckpt in (False, True):
        m = _ScaledAffine()
        zz = z.clone().requires_grad_(True)
        out = sample(m, zz, y, num_steps=3, checkpoint=ckpt, freeze_model=False)
        n_fwd = len(m.batches)
        out.square().sum().backward()
        calls[ckpt] = (n_fwd, len(m.batches) - n_fwd)
        grads[ckpt] = (zz.grad.clone(), m.a.grad.clone())
    assert calls[False] == (3, 0)
    m = _ScaledAffine()
    sample(m, z.clone().requires_grad_(True), y, num_steps=3).sum().backward()
    assert len(m.batches) == 3  # the default does not checkpoint: no recomputation
    assert calls[True] == (3, 3)  # each step recomputed once in the backward pass
    torch.testing.assert_close(grads[True][0], grads[False][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grads[True][1], grads[False][1], rtol=1e-12, atol=1e-14)
    # the parameter gets its gradient through a checkpoint even when z needs none
    m = _ScaledAffine()
    sample(m, z, y, num_steps=3, checkpoint=True, freeze_model=False).sum().backward()
    assert m.a.grad is not None and m.a.grad.abs() > 0
    # without grad mode nothing is checkpointed (or recomputed)
    m = _ScaledAffine()
    with torch.no_grad():
        sample(m, z, y, num_steps=3, checkpoint=True)
    assert len(m.batches) == 3


def test_enable_grad_none_follows_the_current_mode(latents) -> None:
    from lightning_fv.diffusion.sampler import sample

    z, y = latents
    zz = z.clone().requires_grad_(True)
    assert sample(_Affine(), zz, y, num_steps=2).requires_grad
    with torch.no_grad():
        assert not sample(_Affine(), zz, y, num_steps=2).requires_grad
        assert sample(_Affine(), zz, y, num_steps=2, enable_grad=True).requires_grad
