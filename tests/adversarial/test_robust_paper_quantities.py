"""The paper's quantities of the robust miniature (`robust-representations…` §4.1 Eq. 4,
§4.2 Eq. 5, App. A.3): the Eq. 4 grid, the feature-consistency measure, the held-out
recognition rate and the √d rescaling of App. A.3's ε."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from lightning_fv.adversarial import maximize_coordinate, preset, representation
from lightning_fv.adversarial.representation import (
    coordinate_visualizations,
    feature_consistency,
    recognition_rate,
)


@pytest.fixture
def smooth_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.Softplus(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4),
    )


def test_paper_training_eps_rescaled_to_32px_is_one_half():
    cfg = preset("paper_training", (3, 32, 32))  # App. A.3: 3.5, 7 steps of 0.1 at 224 px
    assert cfg.eps == pytest.approx(3.5 * 32 / 224) == pytest.approx(0.5)
    assert cfg.step_size == pytest.approx(0.1 / 7)
    assert cfg.steps == 7
    assert preset("paper_training", (3, 64, 64)).eps == pytest.approx(1.0)


def test_coordinate_grid_matches_one_call_per_seed_and_coordinate(smooth_net):
    g = torch.Generator().manual_seed(0)
    seeds = torch.rand(3, 3, 6, 6, generator=g)
    coords = [1, 7, 20]
    grid = coordinate_visualizations(smooth_net, seeds, coords, eps=1.5, steps=15,
                                     step_size=0.1)
    assert grid.shape == (3, 3, 3, 6, 6)
    for s, (k, i) in itertools.product(range(3), enumerate(coords)):
        ref = maximize_coordinate(smooth_net, seeds[s:s + 1], i, eps=1.5, steps=15,
                                  step_size=0.1)
        torch.testing.assert_close(grid[s, k], ref[0], atol=1e-5, rtol=0)
    with torch.no_grad():  # each image raised its own coordinate above the seed's value
        before = representation(smooth_net, seeds)[:, coords]
        after = torch.stack([representation(smooth_net, grid[:, k])[:, i]
                             for k, i in enumerate(coords)], 1)
    assert (after > before).all()


def _reference_consistency(d: np.ndarray) -> tuple[float, float]:
    """Loop over every (seed pair, coordinate pair) with numpy's corrcoef."""
    s, k = d.shape[:2]
    flat = d.reshape(s, k, -1)
    same, diff = [], []
    for a, b in itertools.permutations(range(s), 2):
        for i, j in itertools.product(range(k), range(k)):
            r = np.corrcoef(flat[a, i], flat[b, j])[0, 1]
            (same if i == j else diff).append(r)
    return float(np.mean(same)), float(np.mean(diff))


def test_feature_consistency_equals_a_loop_over_pearson_correlations():
    d = torch.randn(4, 3, 2, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pattern = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(2),
                          dtype=torch.float64)
    d = d + 1.5 * pattern  # a shared pattern per coordinate: same > different
    same, diff = feature_consistency(d)
    ref_same, ref_diff = _reference_consistency(d.numpy())
    assert same == pytest.approx(ref_same, abs=1e-10)
    assert diff == pytest.approx(ref_diff, abs=1e-10)
    assert same > diff + 0.3


def test_feature_consistency_exact_values_for_orthogonal_patterns():
    # δ_{s,k} = a_s·P_k + b_s with zero-mean orthogonal P_k: ρ = 1 for k = k', 0 otherwise,
    # whatever the per-seed gain a_s > 0 and offset b_s.
    p = torch.tensor([[1.0, -1.0, 1.0, -1.0], [1.0, 1.0, -1.0, -1.0], [1.0, -1.0, -1.0, 1.0]])
    gains, offsets = torch.tensor([0.5, 2.0, 3.0]), torch.tensor([0.1, -4.0, 7.0])
    d = gains[:, None, None] * p[None] + offsets[:, None, None]  # (S=3, K=3, 4)
    same, diff = feature_consistency(d)
    assert same == pytest.approx(1.0, abs=1e-12)
    assert diff == pytest.approx(0.0, abs=1e-12)
    # a coordinate whose change flips sign between seeds: ρ = −1 for those pairs
    flipped = d.clone()
    flipped[1] = -flipped[1]
    same, _ = feature_consistency(flipped)
    assert same == pytest.approx((1 - 1 - 1 - 1 - 1 + 1) / 6, abs=1e-12)  # 6 ordered pairs
    # an unmoved seed (δ = 0, no correlation) is left out: the values stay exact
    with_zero = torch.cat([d, torch.zeros(1, 3, 4)])
    assert feature_consistency(with_zero) == pytest.approx((1.0, 0.0), abs=1e-12)
    one_dead = d.clone()
    one_dead[0, 0] = 0.0  # 4 of the 6 same-coordinate pairs of k = 0 drop out: still 1
    assert feature_consistency(one_dead) == pytest.approx((1.0, 0.0), abs=1e-12)
    assert all(math.isnan(v) for v in feature_consistency(torch.zeros(2, 2, 4)))
    with pytest.raises(ValueError, match="S >= 2"):
        feature_consistency(torch.zeros(1, 3, 4))


def test_recognition_rate_counts_the_classifier_argmax():
    clf = nn.Sequential(nn.Flatten(), nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        clf[1].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    x = torch.tensor([[3.0, 1.0], [0.0, 2.0], [-1.0, -2.0], [5.0, 0.0], [0.0, 1.0]])
    # argmax: 0, 1, 2, 0, 1
    labels = torch.tensor([0, 1, 1, 2, 1])
    assert recognition_rate(clf, x, labels) == pytest.approx(3 / 5)
    assert recognition_rate(clf, x, labels, batch_size=2) == pytest.approx(3 / 5)
    clf.train()
    recognition_rate(clf, x, labels)
    assert clf.training  # mode restored
    with pytest.raises(ValueError, match="5 images for 4 labels"):
        recognition_rate(clf, x, labels[:4])
    assert math.isclose(recognition_rate(clf, x[:1], torch.tensor([0])), 1.0)


def test_scheduled_inversion_reports_progress_after_each_chunk(smooth_net):
    from lightning_fv.adversarial import invert_scheduled

    g = torch.Generator().manual_seed(3)
    target, x0 = torch.rand(2, 3, 6, 6, generator=g), torch.rand(2, 3, 6, 6, generator=g)
    calls: list[tuple[int, float]] = []
    _, trace = invert_scheduled(smooth_net, target, x0, steps=10, step_size=0.05, chunks=3,
                                progress=lambda done, dist: calls.append((done, dist)))
    assert [c[0] for c in calls] == [4, 7, 10]  # 10 steps in chunks of 4, 3, 3
    assert [c[1] for c in calls] == trace[1:]
    assert trace[-1] < trace[0]
