"""``robust_accuracy`` against the closed form of ℓ∞ attacks on a linear classifier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fv.adversarial import PGDConfig, robust_accuracy


class _Linear2(nn.Module):
    """logits ``[0, wᵀ(x − 0.5)]``: class 1 iff ``wᵀ(x − 0.5) > 0``."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = ((x - 0.5).flatten(1) * self.w.flatten()).sum(1)
        return torch.stack([torch.zeros_like(s), s], 1)


def test_robust_accuracy_matches_the_linf_margin_rule_of_a_linear_model() -> None:
    """An ℓ∞ attack of radius ε moves ``wᵀx`` by at most ``ε‖w‖₁``, and PGD reaches that on a
    linear model, so a sample is robust iff its margin ``|wᵀ(x − 0.5)|/‖w‖₁`` exceeds ε."""
    w = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    margins = torch.tensor([-0.2, -0.08, -0.02, 0.03, 0.15, 0.04, -0.1])  # in units of ‖w‖₁
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1])
    x = 0.5 + margins.view(-1, 1, 1, 1) * w.sign()  # wᵀ(x − 0.5) = margin · ‖w‖₁
    eps = 0.05
    correct = (margins > 0) == (y == 1)  # 5 of 7
    robust = correct & (margins.abs() > eps)  # 3 of 7
    cfg = PGDConfig(norm="linf", eps=eps, steps=10, step_size=0.02)
    clean_acc, robust_acc = robust_accuracy(_Linear2(w), x, y, cfg, batch_size=3,
                                            generator=torch.Generator().manual_seed(1))
    assert clean_acc == pytest.approx(float(correct.float().mean())) == pytest.approx(5 / 7)
    assert robust_acc == pytest.approx(float(robust.float().mean())) == pytest.approx(3 / 7)
    # a radius below every margin leaves the accuracy clean
    small = PGDConfig(norm="linf", eps=0.01, steps=10, step_size=0.004)
    assert robust_accuracy(_Linear2(w), x, y, small) == pytest.approx((5 / 7, 5 / 7))


def test_robust_accuracy_refuses_a_targeted_config() -> None:
    with pytest.raises(ValueError, match="untargeted"):
        robust_accuracy(_Linear2(torch.ones(1, 3, 2, 2)), torch.rand(2, 3, 2, 2),
                        torch.zeros(2, dtype=torch.long), PGDConfig(targeted=True))
