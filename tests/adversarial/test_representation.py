"""Representation tools (Eq. 4–8): each checks the quantity it optimizes and its ball."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_fv.adversarial import (
    accentuate,
    add_feature,
    classifier_weight,
    interpolate,
    invert,
    maximize_coordinate,
    representation,
    representation_and_logits,
    top_features,
)


@pytest.fixture
def smooth_net() -> nn.Module:
    """Softplus CNN with a 32-d representation: inversion has no dead-ReLU plateaus."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.Softplus(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.Softplus(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5),
    )


def _dist(model, x, r_t):
    with torch.no_grad():
        return (representation(model, x) - r_t).norm(dim=1)


def test_representation_is_the_input_of_the_final_linear_layer(tiny_net):
    x = torch.rand(3, 3, 8, 8)
    r, logits = representation_and_logits(tiny_net, x)
    assert r.shape == (3, 6)
    w, b = classifier_weight(tiny_net), tiny_net.fc.bias
    torch.testing.assert_close(logits, r @ w.T + b)


def test_inversion_from_another_image_cuts_representation_distance_tenfold(smooth_net):
    g = torch.Generator().manual_seed(0)
    target = torch.rand(4, 3, 8, 8, generator=g)
    x0 = torch.rand(4, 3, 8, 8, generator=g)
    with torch.no_grad():
        r_t = representation(smooth_net, target)
    out = invert(smooth_net, target, x0=x0, eps=3.0, steps=100, step_size=0.05)
    assert (_dist(smooth_net, out, r_t) < _dist(smooth_net, x0, r_t) / 10).all()
    assert ((out - x0).flatten(1).norm(dim=1) <= 3.0 + 1e-5).all()
    assert out.min() >= 0 and out.max() <= 1


def test_inversion_respects_a_small_ball_and_accepts_a_target_representation(smooth_net):
    tiny_net = smooth_net
    g = torch.Generator().manual_seed(1)
    target, x0 = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    with torch.no_grad():
        r_t = representation(tiny_net, target)
    out = invert(tiny_net, r_t, x0=x0, eps=0.3, steps=20, step_size=0.05)
    size = (out - x0).flatten(1).norm(dim=1)
    assert ((size <= 0.3 + 1e-5) & (size > 0.29)).all()  # on the sphere, less the clamp
    assert (_dist(tiny_net, out, r_t) < _dist(tiny_net, x0, r_t)).all()
    noise = invert(tiny_net, target, steps=2, step_size=0.05,
                   generator=torch.Generator().manual_seed(3))  # default Gaussian-noise seed
    assert noise.shape == target.shape
    with pytest.raises(ValueError, match="noise seed needs target images"):
        invert(tiny_net, r_t, steps=1)


def test_interpolation_matches_the_mixed_representation_at_each_lambda(smooth_net):
    tiny_net = smooth_net
    g = torch.Generator().manual_seed(2)
    x1, x2 = torch.rand(2, 3, 8, 8, generator=g), torch.rand(2, 3, 8, 8, generator=g)
    lams = [0.0, 0.5, 1.0]
    out = interpolate(tiny_net, x1, x2, lams, x0=torch.full((2, 3, 8, 8), 0.5),
                      eps=3.0, steps=100, step_size=0.05)
    assert out.shape == (3, 2, 3, 8, 8)
    with torch.no_grad():
        r1, r2 = representation(tiny_net, x1), representation(tiny_net, x2)
    grey = torch.full((2, 3, 8, 8), 0.5)
    for i, lam in enumerate(lams):
        r_t = (1 - lam) * r1 + lam * r2
        assert (_dist(tiny_net, out[i], r_t) < _dist(tiny_net, grey, r_t) / 4).all()


def test_coordinate_maximization_raises_the_coordinate_within_the_ball(smooth_net):
    tiny_net = smooth_net
    x0 = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    idx = torch.tensor([0, 2, 5])
    out = maximize_coordinate(tiny_net, x0, idx, eps=2.0, steps=40, step_size=0.1)
    with torch.no_grad():
        before = representation(tiny_net, x0).gather(1, idx[:, None])
        after = representation(tiny_net, out).gather(1, idx[:, None])
    assert (after > before + 0.02).all()
    assert ((out - x0).flatten(1).norm(dim=1) <= 2.0 + 1e-5).all()
    with pytest.raises(IndexError, match="out of range 0..31"):
        maximize_coordinate(tiny_net, x0, 32, steps=1)


def test_feature_addition_stays_within_eps_and_increases_the_feature(tiny_net):
    tiny_net.eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    out = add_feature(tiny_net, x, 1, eps=0.5, steps=20, step_size=0.05, norm="linf")
    assert (out - x).abs().max() <= 0.5 + 1e-6
    with torch.no_grad():
        assert (representation(tiny_net, out)[:, 1] > representation(tiny_net, x)[:, 1]).all()


def test_top_features_are_the_largest_r_times_w_of_the_predicted_class(tiny_net):
    tiny_net.eval()
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(6))
    vals, idx, pred = top_features(tiny_net, x, k=3)
    with torch.no_grad():
        h = tiny_net.pool(tiny_net.relu2(tiny_net.bn(tiny_net.conv2(
            tiny_net.relu1(tiny_net.conv1(x)))))).flatten(1)
        logits = tiny_net.fc(h)
    assert torch.equal(pred, logits.argmax(1))
    for b in range(5):
        contrib = h[b] * tiny_net.fc.weight[pred[b]]
        ref = sorted(contrib.tolist(), reverse=True)[:3]
        torch.testing.assert_close(vals[b], torch.tensor(ref))
        torch.testing.assert_close(contrib[idx[b]], vals[b])
    with pytest.raises(ValueError, match="k must be in 1..6"):
        top_features(tiny_net, x, k=7)


def test_accentuation_increases_the_sum_of_the_top_k_coordinates(tiny_net):
    tiny_net.train()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(7))
    out, idx = accentuate(tiny_net, x, k=2, eps=1.0, steps=20, step_size=0.1)
    assert tiny_net.training  # mode restored
    with torch.no_grad():
        tiny_net.eval()
        s0 = representation(tiny_net, x).gather(1, idx).sum(1)
        s1 = representation(tiny_net, out).gather(1, idx).sum(1)
    assert (s1 > s0).all()
    assert ((out - x).flatten(1).norm(dim=1) <= 1.0 + 1e-5).all()
