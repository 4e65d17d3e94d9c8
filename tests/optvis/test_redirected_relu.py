"""Redirected ReLU gradients (Lucid's ``redirected_relu_grad``), `lightning_fv.optvis.relu`."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fv.optvis import render
from lightning_fv.optvis.relu import redirect_relus, redirected_relu


def test_backward_rule_on_a_hand_worked_example() -> None:
    # sample 0: one open position with non-zero gradient -> the ordinary ReLU gradient
    # sample 1: closed everywhere -> identity, except where the step would close it further
    x = torch.tensor([[[-1.0, 2.0, -3.0]], [[-1.0, -2.0, -3.0]]], requires_grad=True)
    g = torch.tensor([[[-5.0, -7.0, 4.0]], [[-5.0, 6.0, -8.0]]])  # dL/dReLU(x), L minimized
    y = redirected_relu(x)
    torch.testing.assert_close(y, torch.relu(x))
    y.backward(g)
    expected = torch.tensor([[[0.0, -7.0, 0.0]], [[-5.0, 0.0, -8.0]]])
    assert torch.equal(x.grad, expected)


def test_same_as_relu_when_gradient_flows() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    g = torch.randn(4, 3, 5, 5)
    redirected_relu(x).backward(g)
    a = x.grad.clone()
    x.grad = None
    torch.relu(x).backward(g)
    assert torch.equal(a, x.grad)


class _Closed(nn.Module):
    """One unit ``ReLU(x̄ − 2)`` of the channel sum: closed on a mid-grey start image."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(-2.0)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


def test_closed_unit_only_moves_with_redirection() -> None:
    model = _Closed().eval()
    kw = dict(thresholds=(32,), image_size=8, transforms=None)
    with pytest.warns(RuntimeWarning, match=r"zero gradient at the last step.*relu:0"):
        stuck = render(model, "relu:0", redirect_relu_steps=0, **kw)
    assert stuck.values[32].item() == 0.0
    moved = render(model, "relu:0", redirect_relu_steps=16, **kw)
    assert moved.values[32].item() > 0.0  # opened, and kept rising on its own gradient
    assert "forward" not in vars(model.relu)  # the module's own forward is back
    with pytest.raises(ValueError, match="redirect_relu_steps"):
        render(model, "relu:0", redirect_relu_steps=-1, **kw)


def test_active_units_render_bit_identically_with_and_without() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()).eval()
    with torch.no_grad():
        model[2].bias.fill_(1.0)  # every unit open on the start image
    kw = dict(thresholds=(8,), image_size=12, batch=2)
    a = render(model, "3:1", redirect_relu_steps=16, **kw).final
    b = render(model, "3:1", redirect_relu_steps=0, **kw).final
    assert torch.equal(a, b)


def test_restored_after_an_error() -> None:
    model = nn.Sequential(nn.ReLU(), nn.ReLU())
    with pytest.raises(RuntimeError, match="boom"), redirect_relus(model) as mods:
        assert len(mods) == 2 and all("forward" in vars(m) for m in mods)
        raise RuntimeError("boom")
    assert all("forward" not in vars(m) for m in model)
