"""Public optvis names against hand computations: ``layer_names``, ``model_objective_fn``
and ``render_in_ball`` (`robust-representations…` §4.1, App. A.4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fv.optvis import layer_names, model_objective_fn, render_in_ball
from lightning_fv.optvis import objectives as obj


class _Linear(nn.Module):
    """``f(x) = [wᵀx, −wᵀx]`` as two logits, with a ``feat`` layer equal to ``wᵀx``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.feat = nn.Identity()
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.feat((self.drop(x) * self.w).flatten(1).sum(1, keepdim=True))
        return torch.cat([s, -s], 1)


def test_layer_names_are_every_submodule_in_registration_order(tiny_net) -> None:
    assert layer_names(tiny_net) == ["conv1", "relu1", "conv2", "bn", "relu2", "pool", "fc"]
    nested = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Sequential(nn.ReLU(), nn.Linear(1, 1)))
    assert layer_names(nested) == ["0", "1", "1.0", "1.1"]


def test_model_objective_fn_is_the_objective_of_the_normalized_image_with_its_gradient(
        tiny_net) -> None:
    tiny_net.eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor([0.2, 0.4, 0.6]), torch.tensor([0.5, 0.25, 0.2])

    class Norm(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return (z - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    fn = model_objective_fn(tiny_net, "conv2:3", Norm())
    xg = x.clone().requires_grad_(True)
    got = fn(xg)
    (g_got,) = torch.autograd.grad(got.sum(), xg)
    xr = x.clone().requires_grad_(True)
    z = Norm()(xr)
    ref = tiny_net.conv2(tiny_net.relu1(tiny_net.conv1(z)))[:, 3].mean((1, 2))
    (g_ref,) = torch.autograd.grad(ref.sum(), xr)
    torch.testing.assert_close(got, ref)
    torch.testing.assert_close(g_got, g_ref)
    # an objective on the output and one on the input see the model's logits and the image
    logit = model_objective_fn(tiny_net, obj.class_logit(4) + obj.l1())(x)
    torch.testing.assert_close(logit, tiny_net(x)[:, 4] - x.abs().flatten(1).mean(1))
    assert all(not m._forward_hooks for m in tiny_net.modules())  # hooks closed per call


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_render_in_ball_reaches_the_linear_optimum_and_restores_the_model(norm: str) -> None:
    w = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    model = _Linear(w).train()  # dropout would scramble the optimum unless eval is used
    x0 = torch.full((2, 3, 4, 4), 0.5)
    eps = 0.2 if norm == "linf" else 0.4
    out = render_in_ball(model, "feat:0", x0, eps=eps, step_size=eps / 4, steps=12, norm=norm)
    target = eps * w.sign() if norm == "linf" else eps * w / w.norm()
    torch.testing.assert_close(out - x0, target.expand_as(x0), atol=1e-5, rtol=0)
    assert model.training and model.w.requires_grad and model.w.grad is None
    # the other logit is minimized by the same image with the opposite sign
    out2 = render_in_ball(model, obj.class_logit(1), x0, eps=eps, step_size=eps / 4, steps=12,
                          norm=norm)
    torch.testing.assert_close(out2 - x0, -target.expand_as(x0), atol=1e-5, rtol=0)
