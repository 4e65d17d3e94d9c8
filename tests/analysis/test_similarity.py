"""Sanity check: pair selection, normalization, smoothing vs hand computation and scipy."""

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats as ss
import torch
from torch import nn

from lightning_fv.analysis.similarity import (
    natural_pairs,
    normalize_between_bounds,
    similarity_groups,
    similarity_sanity_check,
    smooth_uniform,
    smoothed_band,
    visualization_pairs,
)


@pytest.mark.parametrize("n,window", [(12, 7), (6, 7), (3, 5), (1, 7), (9, 1)])
def test_smoothing_matches_scipy_ndimage_convolve_reflect(n, window):
    x = np.random.default_rng(n).normal(size=n)
    ref = scipy.ndimage.convolve(x, np.ones(window) / window)
    assert np.allclose(smooth_uniform(torch.from_numpy(x), window).numpy(), ref, atol=1e-12)


def test_normalization_by_hand_and_exclusion_below_gap():
    fv = torch.tensor([0.3, 0.5, 0.2])
    lower = torch.tensor([0.1, 0.4, 0.2])
    upper = torch.tensor([0.5, 0.405, 0.6])
    norm, inc = normalize_between_bounds(fv, lower, upper, 0.01)
    assert inc.tolist() == [True, False, True]
    assert torch.allclose(norm[[0, 2]], torch.tensor([0.5, 0.0]))
    assert torch.isnan(norm[1])


def test_band_is_smoothed_curve_plus_minus_smoothed_std_over_included_layers():
    norm = torch.tensor([0.0, 1.0, float("nan"), 0.5, 0.25], dtype=torch.float64)
    std = torch.tensor([0.1, 0.2, float("nan"), 0.3, 0.4], dtype=torch.float64)
    inc = torch.tensor([True, True, False, True, True])
    # different windows for the curve and the band, so swapping them is caught
    s, lo, hi = smoothed_band(norm, std, inc, window=3, std_window=1)
    v = np.array([0.0, 1.0, 0.5, 0.25])
    sv = np.array([0.1, 0.2, 0.3, 0.4])
    ref = scipy.ndimage.convolve(v, np.ones(3) / 3)
    ref_sd = sv  # a window of 1 leaves the std as it is
    assert np.allclose(s[inc].numpy(), ref) and torch.isnan(s[2])
    assert np.allclose(hi[inc].numpy(), ref + ref_sd) and np.allclose(lo[inc].numpy(), ref - ref_sd)


def test_pairs_follow_the_c3_strides_in_lexicographic_order():
    labels = torch.tensor([0, 0, 1, 0, 1])
    same, other = natural_pairs(labels, 2, 3)
    # same-class pairs: (0,1) (0,3) (1,3) (2,4) -> every 2nd: (0,1) (1,3)
    assert same.tolist() == [[0, 1], [1, 3]]
    # other-class pairs: (0,2) (0,4) (1,2) (1,4) (2,3) (3,4) -> every 3rd: (0,2) (1,4)
    assert other.tolist() == [[0, 2], [1, 4]]
    fv = visualization_pairs(labels, torch.tensor([1, 0]), 2)
    # (0,1) (1,1) (2,0) (3,1) (4,0) -> every 2nd: (0,1) (2,0) (4,0)
    assert fv.tolist() == [[0, 1], [2, 0], [4, 0]]


def test_groups_equal_scipy_spearman_of_the_selected_pairs():
    g = torch.Generator().manual_seed(0)
    nat = torch.randn(6, 40, generator=g)
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    vis = torch.randn(2, 40, generator=g)
    vl = torch.tensor([0, 1])
    out = similarity_groups(nat, labels, vis, vl, strides=(1, 1, 1))
    same, other = natural_pairs(labels, 1, 1)
    ref_u = [ss.spearmanr(nat[i], nat[j])[0] for i, j in same.tolist()]
    ref_f = [ss.spearmanr(nat[i], vis[k])[0]
             for i, k in visualization_pairs(labels, vl, 1).tolist()]
    assert np.allclose(out["upper"].numpy(), ref_u, atol=1e-10)
    assert np.allclose(out["fv"].numpy(), ref_f, atol=1e-10)
    assert out["lower"].numel() == len(other) == 9


class _Identity2(nn.Module):
    """layer ``feat`` = the flattened image; output = the mean of each half as 2 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.feat = nn.Flatten()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.feat(x)
        h = f.shape[1] // 2
        return torch.stack([f[:, :h].mean(1), f[:, h:].mean(1)], 1) + self.dummy


def test_visualizations_identical_to_natural_images_score_near_one_and_misclassified_dropped():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 1, 4, 4, generator=g)
    base[0, :, :2] += 3  # class 0: first half bright -> logit 0 wins
    base[1, :, 2:] += 3
    nat = torch.cat([base[0] + 0.3 * torch.randn(6, 1, 4, 4, generator=g),
                     base[1] + 0.3 * torch.randn(6, 1, 4, 4, generator=g)])
    labels = torch.tensor([0] * 6 + [1] * 6)
    nat = torch.cat([nat, base[1:2]])  # misclassified: class-1 image labelled 0
    labels = torch.cat([labels, torch.tensor([0])])
    vis = nat[[0, 6]]
    model = _Identity2()
    res = similarity_sanity_check(model, ["feat"], nat, labels, vis, torch.tensor([0, 1]),
                                  strides=(1, 1, 1))
    assert res.n_excluded == 1 and res.n_natural == 12
    assert res.upper[0] > 0.6 and res.lower[0] < 0.1
    assert 0.8 < res.score < 1.3 and res.passes
    # "visualizations" that look like the other class fail the check (score ~ 0)
    res2 = similarity_sanity_check(model, ["feat"], nat, labels, nat[[6, 0]],
                                   torch.tensor([0, 1]), strides=(1, 1, 1))
    assert -0.2 < res2.score < 0.2 and not res2.passes


def test_ood_bounds_come_from_the_second_set():
    g = torch.Generator().manual_seed(1)
    model = _Identity2()
    nat = torch.randn(6, 1, 2, 4, generator=g)
    labels = model(nat).argmax(1)
    ood = torch.randn(4, 1, 2, 4, generator=g)
    ood_labels = torch.tensor([5, 5, 7, 7])  # classes need not be the model's
    res = similarity_sanity_check(model, ["feat"], nat, labels, nat[:2], labels[:2],
                                  strides=(1, 1, 1), ood_natural=ood, ood_labels=ood_labels)
    flat = ood.flatten(1).numpy()
    ref_upper = np.mean([ss.spearmanr(flat[0], flat[1])[0], ss.spearmanr(flat[2], flat[3])[0]])
    assert res.ood and abs(float(res.upper[0]) - ref_upper) < 1e-10


def test_mismatched_visualization_size_is_a_clear_error():
    with pytest.raises(ValueError, match="resolution"):
        similarity_groups(torch.randn(4, 10), torch.tensor([0, 0, 1, 1]), torch.randn(1, 12),
                          torch.tensor([0]))
