"""Helpers for the IFV tests: exact optima of S_x on the unit sphere of inputs."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from lightning_fv.optvis.objectives import cosine_power_value


def sphere(v: Tensor) -> Tensor:
    """P(v) = v/‖v‖ per sample: a surjective parameterization of the unit sphere of inputs,
    on which S_x has true interior maxima (gradient exactly zero there)."""
    return v / v.flatten(1).norm(dim=1).reshape(-1, *([1] * (v.dim() - 1)))


def maximize_on_sphere(features: nn.Module, x: Tensor, k: float, n_p: int,
                       seed: int = 0) -> Tensor:
    """Maximize Σ_b S_{x_b}(features(v_b/‖v_b‖)) with L-BFGS in float64; returns v (B, n_p)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(features, nn.Sequential) and len(features) == 1:  # linear: start near Wᵀx
        v = (x @ features[0].weight).detach().clone()
    else:
        v = torch.randn(x.shape[0], n_p, generator=g, dtype=torch.float64)
    v = (v + 0.3 * torch.randn(v.shape, generator=g, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.LBFGS([v], lr=1, max_iter=2000, tolerance_grad=1e-14,
                            tolerance_change=1e-20, history_size=50,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = -cosine_power_value(x, features(sphere(v)), k).sum()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)
    return v.detach()


@pytest.fixture
def on_sphere() -> tuple:
    """``(sphere, maximize_on_sphere)``."""
    return sphere, maximize_on_sphere
