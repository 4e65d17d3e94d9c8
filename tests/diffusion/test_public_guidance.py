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
