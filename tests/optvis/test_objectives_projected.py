"""Objectives and the projected step against hand computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_fv.optvis import objectives as obj
from lightning_fv.optvis.constrained import maximize_in_ball
from lightning_fv.optvis.projected import normalized_step, project, projected_step, random_start


def test_channel_neuron_and_batched_units():
    a = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    acts = {"l": a}
    assert torch.equal(obj.channel("l", 1)(acts), a[:, 1].mean((-1, -2)))
    assert torch.equal(obj.neuron("l", 2)(acts), a[:, 2, 2, 2])
    two = torch.stack([a[0, 2].mean(), a[1, 0].mean()])
    assert torch.equal(obj.channel("l", [2, 0])(acts), two)
    u = obj.units_objective(["l:1", "l:0@1,3"])
    assert torch.equal(u(acts), torch.stack([a[0, 1].mean(), a[1, 0, 1, 3]]))


def test_objectives_compose_linearly():
    acts = {"l": torch.randn(3, 2, 5, 5)}
    a, b = obj.channel("l", 0), obj.layer_l2("l")
    combo = 2 * a - 0.5 * b + 1.0
    assert torch.allclose(combo(acts), 2 * a(acts) - 0.5 * b(acts) + 1.0)
    assert set(combo.layers) == {"l"}


def test_cosine_power_objective_matches_the_formula():
    # inverse-feature-visualization §2: S_x(y) = xᵀy · (xᵀy/‖y‖)^k
    y = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    x = torch.tensor([1.0, 0.0])
    assert torch.allclose(obj.cosine_power_value(x, y, 0), torch.tensor([3.0, 1.0]))
    assert torch.allclose(obj.cosine_power_value(x, y, 2), torch.tensor([3 * 0.36, 1.0]))
    assert torch.allclose(obj.cosine_power_value(torch.stack([x, x.flip(0)]), y, 1),
                          torch.tensor([3 * 0.6, 0.0]))


def test_maxpool_mean_aggregation_is_3x3_stride1_maxpool_then_mean():
    a = torch.randn(2, 4, 6, 6)
    ref = F.max_pool2d(a, 3, 1).mean((-1, -2))
    assert torch.allclose(obj.aggregate(a, "maxpool_mean"), ref)
    assert torch.allclose(obj.aggregate(a, "center"), a[..., 3, 3])
    with pytest.raises(ValueError, match="unknown aggregation 'median'"):
        obj.aggregate(a, "median")


def test_class_log_prob_is_log_softmax_and_diversity_of_identical_samples_is_minus_one():
    logits = torch.randn(3, 5)
    acts = {obj.OUTPUT: logits}
    assert torch.allclose(obj.class_log_prob(2)(acts), logits.log_softmax(-1)[:, 2])
    same = torch.randn(1, 4, 3, 3).expand(3, -1, -1, -1)
    assert torch.allclose(obj.diversity("l")({"l": same}), torch.full((3,), -1.0), atol=1e-6)


def test_regularizers_match_hand_computations():
    # not symmetric: differences down the rows and along them differ (a doubled axis shows)
    x = torch.tensor([[[[0.0, 1.0, 1.0], [2.0, 5.0, 3.0]]]])
    acts = {obj.INPUT: x}
    assert obj.l1()(acts).item() == pytest.approx(-12 / 6)
    assert obj.l2()(acts).item() == pytest.approx(-40.0)
    # down: |2-0| + |5-1| + |3-1| = 8; along: |1-0| + |1-1| + |5-2| + |3-5| = 6; over 6 pixels
    assert obj.total_variation()(acts).item() == pytest.approx(-14 / 6)
    two = torch.cat([x, 2 * x])  # per image, not per batch
    assert obj.total_variation()({obj.INPUT: two}).tolist() == pytest.approx([-14 / 6, -28 / 6])
    flat = torch.full((1, 3, 8, 8), 0.3)
    assert obj.blur()({obj.INPUT: flat}).abs().item() < 1e-12


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projected_steps_stay_in_the_ball_and_pixel_range(norm):
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        eps = float(torch.rand(1, generator=g)) * 2
        x0 = torch.rand(4, 3, 5, 5, generator=g)
        x = random_start(x0, eps, norm, generator=g)
        for _ in range(3):
            grad = torch.randn(x.shape, generator=g) * 10
            x = projected_step(x, grad, x0, eps, 0.7, norm)
        d = (x - x0).flatten(1)
        size = d.norm(dim=1) if norm == "l2" else d.abs().amax(1)
        assert (size <= eps + 1e-5).all()
        assert x.min() >= 0 and x.max() <= 1


def test_l2_projection_is_radial_scaling():
    d = torch.tensor([[3.0, 4.0]])
    assert torch.allclose(project(d, 1.0, "l2"), torch.tensor([[0.6, 0.8]]))
    assert torch.allclose(project(d, 10.0, "l2"), d)
    assert torch.allclose(project(d, 2.0, "linf"), torch.tensor([[2.0, 2.0]]))
    with pytest.raises(ValueError, match="unknown norm 'l1'"):
        project(d, 1.0, "l1")


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_maximizing_a_linear_function_in_a_ball_reaches_the_closed_form(norm):
    torch.manual_seed(0)
    w = torch.randn(1, 3, 4, 4)
    x0 = torch.full((1, 3, 4, 4), 0.5)
    eps = 0.2 if norm == "linf" else 0.4
    x = maximize_in_ball(lambda z: (z * w).flatten(1).sum(1), x0, eps, eps / 4, 20, norm)
    target = eps * w.sign() if norm == "linf" else eps * w / w.norm()
    assert torch.allclose(x - x0, target, atol=1e-5)


def test_random_start_is_uniform_in_the_ball():
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((40_000, 1, 1, 2), 0.5, dtype=torch.float64)  # d = 2 values per sample
    eps = 0.3
    d2 = (random_start(x0, eps, "l2", generator=g, clamp=None) - x0).flatten(1)
    r = d2.norm(dim=1) / eps
    # uniform in the disc: P(r ≤ t) = t², so E[r²] = 1/2 and E[r] = 2/3; no direction favoured
    assert r.max() <= 1 + 1e-12
    assert abs(float(r.pow(2).mean()) - 1 / 2) < 0.01 and abs(float(r.mean()) - 2 / 3) < 0.01
    assert d2.mean(0).abs().max() < 0.005
    dinf = (random_start(x0, eps, "linf", generator=g, clamp=None) - x0).flatten(1)
    # uniform in the square: each coordinate uniform on [−ε, ε], E[δ²] = ε²/3
    assert dinf.abs().max() <= eps and dinf.mean(0).abs().max() < 0.005
    torch.testing.assert_close(dinf.pow(2).mean(0), torch.full((2,), eps**2 / 3,
                                                               dtype=torch.float64),
                               atol=5e-4, rtol=0)
    # seeded and clamped to the pixel range
    a = random_start(x0[:5], 0.8, "linf", generator=torch.Generator().manual_seed(3))
    b = random_start(x0[:5], 0.8, "linf", generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.min() == 0 and a.max() <= 1  # 0.5 − 0.8u < 0 is clamped


def test_normalized_step_lengths_and_zero_gradient():
    grad = torch.tensor([[[[3.0, -4.0]]], [[[0.0, 0.0]]], [[[0.0, -2.0]]]])
    l2 = normalized_step(grad, 0.5, "l2")
    torch.testing.assert_close(l2, torch.tensor([[[[0.3, -0.4]]], [[[0.0, 0.0]]],
                                                 [[[0.0, -0.5]]]]))
    linf = normalized_step(grad, 0.5, "linf")
    torch.testing.assert_close(linf, torch.tensor([[[[0.5, -0.5]]], [[[0.0, 0.0]]],
                                                   [[[0.0, -0.5]]]]))


def test_projected_step_with_per_sample_radius_descent_and_no_clamp():
    x0 = torch.zeros(2, 1, 1, 2)
    x = torch.zeros(2, 1, 1, 2)
    grad = torch.tensor([[[[1.0, 2.0]]], [[[-1.0, 0.5]]]])
    eps = torch.tensor([0.1, 0.25]).view(2, 1, 1, 1)
    up = projected_step(x, grad, x0, eps, 1.0, "linf", clamp=None)
    torch.testing.assert_close(up, torch.tensor([[[[0.1, 0.1]]], [[[-0.25, 0.25]]]]))
    down = projected_step(x, grad, x0, eps, 1.0, "linf", clamp=None, descend=True)
    torch.testing.assert_close(down, -up)
    l2 = projected_step(x, grad, x0, eps, 1.0, "l2", clamp=None)
    torch.testing.assert_close(l2.flatten(1).norm(dim=1), torch.tensor([0.1, 0.25]))
    torch.testing.assert_close(l2.flatten(1) / l2.flatten(1).norm(dim=1, keepdim=True),
                               grad.flatten(1) / grad.flatten(1).norm(dim=1, keepdim=True))
    # inside the ball nothing is projected; the clamp cuts at the pixel range
    small = projected_step(x + 0.5, grad, x0 + 0.5, 10.0, 0.6, "linf", clamp=(0.0, 1.0))
    torch.testing.assert_close(small, torch.tensor([[[[1.0, 1.0]]], [[[0.0, 1.0]]]]))
    torch.testing.assert_close(project(torch.tensor([[0.3, -0.5]]), torch.tensor([[0.4]]),
                                       "linf"), torch.tensor([[0.3, -0.4]]))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_random_start_is_seeded_full_precision_and_works_for_one_sample(norm):
    x0 = torch.zeros(3, 2, 4, 4, dtype=torch.float64)
    a = random_start(x0, 0.5, norm, generator=torch.Generator().manual_seed(4), clamp=None)
    b = random_start(x0, 0.5, norm, generator=torch.Generator().manual_seed(4), clamp=None)
    c = random_start(x0, 0.5, norm, generator=torch.Generator().manual_seed(5), clamp=None)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # drawn in x0's dtype: float64 draws are not float32 values
    assert a.dtype == torch.float64 and (a != a.float().double()).float().mean() > 0.9
    one = random_start(x0[:1], 0.5, norm, generator=torch.Generator().manual_seed(4),
                       clamp=None)
    size = one.flatten().norm() if norm == "l2" else one.abs().max()
    assert 0 < float(size) <= 0.5


def test_projected_step_defaults_to_l2_and_the_unit_pixel_range():
    x0 = torch.full((1, 1, 1, 2), 0.9)
    grad = torch.tensor([[[[3.0, 4.0]]]])
    out = projected_step(x0, grad, x0, 0.5, 0.25)
    torch.testing.assert_close(out, torch.tensor([[[[1.0, 1.0]]]]))  # 0.9 + (0.15, 0.2), clamped
    inner = projected_step(x0 - 0.5, grad, x0 - 0.5, 0.5, 0.25)
    torch.testing.assert_close(inner, torch.tensor([[[[0.55, 0.6]]]]))
