"""Sanity check: pair selection, normalization, smoothing vs hand computation and scipy."""

import math

import numpy as np
import pytest
import scipy.ndimage
import scipy.stats as ss
import torch
from torch import nn

from lightning_fv.analysis.similarity import (
    _pair_values,
    layer_activations,
    natural_pairs,
    normalize_between_bounds,
    similarity_groups,
    similarity_sanity_check,
    smooth_uniform,
    smoothed_band,
    summarize_groups,
    visualization_pairs,
)


@pytest.mark.parametrize("n,window", [(12, 7), (6, 7), (3, 5), (1, 7), (9, 1), (2, 7), (2, 9),
                                      (5, 2), (6, 4), (3, 8)])
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


# ---------------------------------------------------------------- mutation-testing follow-ups
# (docs/testing.md §4): C.3 of `dont-trust-your-eyes…` fixes the strides (10, 100, 5), the
# gap 0.01 and the smoothing windows 7 (curve) and 5 (std band).


def test_default_strides_keep_every_10th_100th_and_5th_pair_from_the_first():
    labels = torch.arange(40) % 3  # 40 images, 3 classes: 253 same-, 527 other-class pairs
    i, j = np.triu_indices(40, k=1)
    lab = labels.numpy()
    ref_same = np.stack([i, j], 1)[lab[i] == lab[j]][::10]
    ref_other = np.stack([i, j], 1)[lab[i] != lab[j]][::100]
    same, other = natural_pairs(labels)
    assert same.tolist() == ref_same.tolist() and other.tolist() == ref_other.tolist()
    vis = torch.tensor([2, 0, 1, 0])
    ref_fv = np.argwhere(lab[:, None] == vis.numpy()[None, :])[::5]
    assert visualization_pairs(labels, vis).tolist() == ref_fv.tolist()


@pytest.mark.parametrize("call,name", [
    (lambda: natural_pairs(torch.tensor([0, 1]), 0, 1), "stride_same"),
    (lambda: natural_pairs(torch.tensor([0, 1]), 1, 0), "stride_other"),
    (lambda: visualization_pairs(torch.tensor([0, 1]), torch.tensor([0]), 0), "stride_fv"),
])
def test_a_non_positive_stride_names_the_stride(call, name):
    with pytest.raises(ValueError, match=f"^{name} must be a positive integer"):
        call()


def test_groups_use_the_same_other_and_fv_strides_in_that_order():
    g = torch.Generator().manual_seed(2)
    nat = torch.randn(8, 12, generator=g)
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    vis = torch.randn(3, 12, generator=g)
    vl = torch.tensor([1, 0, 1])
    out = similarity_groups(nat, labels, vis, vl, metric="pearson", strides=(2, 3, 4))
    x, v = nat.double().numpy(), vis.double().numpy()
    same, other = natural_pairs(labels, 2, 3)
    fv = visualization_pairs(labels, vl, 4)
    assert len(same) != len(natural_pairs(labels, 3, 3)[0])  # the strides tell apart
    ref = {"upper": [np.corrcoef(x[a], x[b])[0, 1] for a, b in same.tolist()],
           "lower": [np.corrcoef(x[a], x[b])[0, 1] for a, b in other.tolist()],
           "fv": [np.corrcoef(x[a], v[b])[0, 1] for a, b in fv.tolist()]}
    for k in ref:
        assert out[k].dtype == torch.float64 and out[k].shape == (len(ref[k]),)
        assert np.allclose(out[k].numpy(), ref[k], atol=1e-12)


def test_groups_return_the_asked_dtype_and_an_empty_group_has_that_dtype():
    g = torch.Generator().manual_seed(3)
    nat = torch.randn(4, 9, generator=g, dtype=torch.float64)
    out = similarity_groups(nat, torch.zeros(4, dtype=torch.long), nat[:1],
                            torch.tensor([0]), metric="cosine", strides=(1, 1, 1),
                            dtype=torch.float32)
    assert {v.dtype for v in out.values()} == {torch.float32}
    assert out["lower"].shape == (0,)  # one class: no other-class pair
    x = nat.numpy()
    ref = [x[a] @ x[b] / np.linalg.norm(x[a]) / np.linalg.norm(x[b])
           for a, b in natural_pairs(torch.zeros(4), 1, 1)[0].tolist()]
    assert np.allclose(out["upper"].numpy(), ref, atol=1e-6)
    out64 = similarity_groups(nat, torch.zeros(4, dtype=torch.long), nat[:1],
                              torch.tensor([0]), metric="cosine", strides=(1, 1, 1))
    assert out64["lower"].dtype == torch.float64 and out64["lower"].shape == (0,)
    ood = similarity_groups(nat, torch.zeros(4, dtype=torch.long), nat[:1], torch.tensor([0]),
                            metric="cosine", bound_natural=nat[[1, 0, 3]],
                            bound_labels=torch.tensor([0, 1, 1]), strides=(1, 1, 1),
                            dtype=torch.float32)
    assert {v.dtype for v in ood.values()} == {torch.float32}


def test_constant_vectors_are_named_by_their_set_in_the_warning():
    nat = torch.randn(4, 6, generator=torch.Generator().manual_seed(4))
    labels = torch.tensor([0, 0, 1, 1])
    const = torch.ones(1, 6)
    with pytest.warns(RuntimeWarning, match=r"^natural: 1 constant"):
        similarity_groups(torch.cat([nat, const]), torch.cat([labels, torch.tensor([1])]),
                          nat[:1], torch.tensor([0]))
    with pytest.warns(RuntimeWarning, match=r"^visualizations: 1 constant"):
        similarity_groups(nat, labels, const, torch.tensor([0]))
    with pytest.warns(RuntimeWarning, match=r"^ood natural: 1 constant"):
        similarity_groups(nat, labels, nat[:1], torch.tensor([0]),
                          bound_natural=torch.cat([nat, const]),
                          bound_labels=torch.tensor([0, 0, 1, 1, 1]))


def test_pair_values_clamp_to_the_unit_interval_on_both_paths():
    """The dot products of chosen rows, clamped to [-1, 1] (rounding of unit vectors can
    leave the interval; here non-unit rows show the clamp exactly), computed one matrix
    product (many pairs) or by chunked row gathers (few pairs)."""
    za = torch.tensor([[2.0, 0.0], [0.5, 0.25], [-3.0, 1.0], [0.1, -0.2]], dtype=torch.float64)
    zb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.3, 0.7]], dtype=torch.float64)
    full = za.numpy() @ zb.numpy().T
    many = torch.cartesian_prod(torch.arange(4), torch.arange(3))[[0, 11, 6, 4, 2, 7, 9, 1]]
    few = many[:1]  # 8·1 < 4·3: the gather path
    for pairs, chunk in ((many, 1024), (few, 1024), (many[:1], 1)):
        got = _pair_values(za, zb, pairs, chunk)
        ref = np.clip(full[pairs[:, 0].numpy(), pairs[:, 1].numpy()], -1, 1)
        assert got.dtype == torch.float64 and got.tolist() == ref.tolist()
    # values below -1 and above 1 both occur and are clamped
    assert full.min() < -1 and full.max() > 1
    one = _pair_values(za, zb, torch.tensor([[2, 0]]))  # -3 -> -1, a single pair
    assert one.tolist() == [-1.0]
    empty = _pair_values(za.float(), zb.float(), torch.zeros(0, 2, dtype=torch.long))
    assert empty.shape == (0,) and empty.dtype == torch.float32


def test_chunked_gathers_cover_every_pair_in_order():
    g = torch.Generator().manual_seed(5)
    za, zb = torch.randn(40, 3, generator=g, dtype=torch.float64) / 4, \
        torch.randn(30, 3, generator=g, dtype=torch.float64) / 4
    pairs = torch.stack([torch.randint(0, 40, (11,), generator=g),
                         torch.randint(0, 30, (11,), generator=g)], 1)
    ref = (za[pairs[:, 0]] * zb[pairs[:, 1]]).sum(1).clamp(-1, 1)
    for chunk in (1, 4, 1024):
        torch.testing.assert_close(_pair_values(za, zb, pairs, chunk), ref, rtol=0, atol=1e-15)


def test_matrix_path_covers_more_than_256_rows():
    g = torch.Generator().manual_seed(6)
    za = torch.randn(300, 4, generator=g, dtype=torch.float64) / 3
    zb = torch.randn(2, 4, generator=g, dtype=torch.float64) / 3
    pairs = torch.cartesian_prod(torch.arange(300), torch.arange(2)).flip(0)
    ref = (za[pairs[:, 0]] * zb[pairs[:, 1]]).sum(1).clamp(-1, 1)
    torch.testing.assert_close(_pair_values(za, zb, pairs), ref, rtol=0, atol=1e-15)


def test_gap_equal_to_min_gap_is_included_and_the_default_gap_is_001():
    fv = torch.tensor([0.5, 0.5, 0.3], dtype=torch.float64)
    lower = torch.tensor([0.25, 0.0, 0.2], dtype=torch.float64)
    upper = torch.tensor([0.5, 0.015, 0.205], dtype=torch.float64)
    norm, inc = normalize_between_bounds(fv, lower, upper, min_gap=0.25)  # exact 0.25
    assert inc.tolist() == [True, False, False] and norm[0].item() == 1.0
    norm, inc = normalize_between_bounds(fv, lower, upper)  # 0.25, 0.015 >= 0.01; 0.005 not
    assert inc.tolist() == [True, True, False]
    assert norm[1].item() == pytest.approx(0.5 / 0.015) and torch.isnan(norm[2])


def test_band_defaults_are_windows_7_and_5():
    rng = np.random.default_rng(7)
    v, sd = rng.normal(size=9), rng.uniform(0.1, 0.5, size=9)
    inc = torch.ones(9, dtype=torch.bool)
    s, lo, hi = smoothed_band(torch.from_numpy(v), torch.from_numpy(sd), inc)
    ref = scipy.ndimage.convolve(v, np.ones(7) / 7)
    ref_sd = scipy.ndimage.convolve(sd, np.ones(5) / 5)
    assert np.allclose(s.numpy(), ref, atol=1e-12)
    assert np.allclose((hi - s).numpy(), ref_sd, atol=1e-12)
    assert np.allclose((s - lo).numpy(), ref_sd, atol=1e-12)


def _groups(rng, n_layers):
    out = []
    for i in range(n_layers):
        up = rng.uniform(0.5, 0.9, size=4 + i % 3)
        low = rng.uniform(-0.1, 0.3, size=5)
        fv = rng.uniform(0.0, 0.8, size=3 + i % 2)
        out.append({"upper": torch.from_numpy(up), "lower": torch.from_numpy(low),
                    "fv": torch.from_numpy(fv)})
    return out


def test_summary_of_groups_matches_numpy_means_stds_normalization_and_smoothing():
    rng = np.random.default_rng(8)
    groups = _groups(rng, 10)
    groups[3]["fv"] = torch.tensor([0.2, float("nan"), 0.6], dtype=torch.float64)
    groups[5]["upper"] = torch.tensor([0.5, 0.625], dtype=torch.float64)
    groups[5]["lower"] = torch.tensor([0.495, 0.62], dtype=torch.float64)  # gap 0.005
    groups[7]["fv"] = torch.tensor([float("nan"), float("nan")], dtype=torch.float64)
    layers = [f"l{i}" for i in range(10)]
    res = summarize_groups(layers, groups)
    assert res.layers == layers and res.metric == "spearman" and res.ood is False
    for g in ("upper", "lower", "fv"):
        vals = [grp[g].numpy() for grp in groups]
        fin = [v[np.isfinite(v)] for v in vals]
        assert res.counts[g].tolist() == [len(f) for f in fin]
        assert res.undefined[g].tolist() == [len(v) - len(f) for v, f in zip(vals, fin)]
        mean = [f.mean() if len(f) else np.nan for f in fin]
        std = [f.std() if len(f) else np.nan for f in fin]  # population std (ddof 0)
        assert np.allclose(getattr(res, g).numpy(), mean, atol=1e-12, equal_nan=True)
        assert np.allclose(getattr(res, f"{g}_std").numpy(), std, atol=1e-12, equal_nan=True)
    assert res.undefined["fv"][3] == 1 and res.counts["fv"][7] == 0
    up, low, fv = res.upper.numpy(), res.lower.numpy(), res.fv.numpy()
    gap = up - low
    inc = np.isfinite(gap) & (gap >= 0.01) & np.isfinite(fv)
    assert res.included.tolist() == inc.tolist() and inc.sum() == 8
    norm = np.where(inc, (fv - low) / gap, np.nan)
    nstd = np.where(inc, res.fv_std.numpy() / gap, np.nan)
    assert np.allclose(res.normalized.numpy(), norm, atol=1e-12, equal_nan=True)
    assert np.allclose(res.normalized_std.numpy(), nstd, atol=1e-12, equal_nan=True)
    sm = scipy.ndimage.convolve(norm[inc], np.ones(7) / 7)
    band = scipy.ndimage.convolve(nstd[inc], np.ones(5) / 5)
    assert np.allclose(res.smoothed.numpy()[inc], sm, atol=1e-12)
    assert np.allclose(res.band_upper.numpy()[inc], sm + band, atol=1e-12)
    assert np.allclose(res.band_lower.numpy()[inc], sm - band, atol=1e-12)
    assert np.isnan(res.smoothed.numpy()[~inc]).all()
    assert np.isnan(res.band_lower.numpy()[~inc]).all()
    assert res.score == pytest.approx(norm[inc].mean(), abs=1e-12)


def test_summary_passes_its_gap_windows_metric_and_ood_on():
    rng = np.random.default_rng(9)
    groups = _groups(rng, 6)
    res = summarize_groups([str(i) for i in range(6)], groups, metric="cosine", min_gap=0.6,
                           window=3, std_window=1, ood=True)
    up, low = res.upper.numpy(), res.lower.numpy()
    inc = (up - low) >= 0.6
    assert res.included.tolist() == inc.tolist() and 2 <= inc.sum() < 6
    sm = scipy.ndimage.convolve(res.normalized.numpy()[inc], np.ones(3) / 3)
    assert np.allclose(res.smoothed.numpy()[inc], sm, atol=1e-12)
    assert np.allclose((res.band_upper - res.smoothed).numpy()[inc],
                       res.normalized_std.numpy()[inc], atol=1e-12)
    assert res.metric == "cosine" and res.ood is True


def test_summary_of_no_layers_is_empty_with_an_undefined_score():
    res = summarize_groups([], [])
    assert res.layers == [] and res.normalized.shape == (0,) and math.isnan(res.score)
    assert res.upper.dtype == torch.float64 and not res.passes


def test_summary_of_a_group_without_defined_values_is_nan_with_zero_count():
    nan = torch.tensor([float("nan")], dtype=torch.float64)
    g = {"upper": torch.tensor([0.8, 0.6], dtype=torch.float64), "lower": nan,
         "fv": torch.zeros(0, dtype=torch.float64)}
    res = summarize_groups(["a"], [g])
    assert math.isnan(res.lower[0]) and math.isnan(res.lower_std[0])
    assert math.isnan(res.fv[0]) and math.isnan(res.fv_std[0])
    assert res.counts["lower"].tolist() == [0] and res.undefined["lower"].tolist() == [1]
    assert res.counts["fv"].tolist() == [0] and res.undefined["fv"].tolist() == [0]
    assert res.upper_std[0].item() == pytest.approx(0.1)
    assert not res.included[0] and math.isnan(res.score)


def test_layer_activations_are_flattened_float32_and_the_output_only_on_request():
    model = nn.Sequential(nn.Conv2d(1, 2, 1), nn.Flatten(), nn.Linear(2 * 3 * 3, 2)).double()
    x = torch.randn(5, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    acts = layer_activations(model, x, ["0"])
    assert list(acts) == ["0"]
    with torch.no_grad():
        ref = model[0](x)
    assert acts["0"].dtype == torch.float32 and acts["0"].shape == (5, 18)
    assert torch.equal(acts["0"], ref.flatten(1).float())
    both = layer_activations(model, x, ["0"], batch_size=2, with_output=True)
    assert both["__output__"].dtype == torch.float32
    assert torch.allclose(both["__output__"], model(x).detach().float())


class _Stack(nn.Module):
    """Five layers of fixed random linear maps with tanh; the output is ``l4``'s 2 logits."""

    def __init__(self, dims: tuple[int, ...] = (16, 14, 12, 10, 8, 2)) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(11)
        self.depth = len(dims) - 1
        self.layers = nn.ModuleList()
        for i, (a, b) in enumerate(zip(dims, dims[1:])):
            lin = nn.Linear(a, b)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(b, a, generator=g) / a**0.5)
                lin.bias.zero_()
            self.add_module(f"l{i}", lin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1)
        for i in range(self.depth):
            h = getattr(self, f"l{i}")(h)
            h = torch.tanh(h) if i < self.depth - 1 else h
        return h


def test_sanity_check_passes_its_metric_windows_dtype_and_counts_on():
    g = torch.Generator().manual_seed(12)
    model = _Stack()
    nat = torch.randn(10, 1, 4, 4, generator=g)
    labels = model(nat).argmax(1)  # every image correctly classified
    vis = torch.randn(3, 1, 4, 4, generator=g)  # 3 visualizations of 1 channel
    vl = torch.tensor([0, 1, 0])
    layers = [f"l{i}" for i in range(4)]
    res = similarity_sanity_check(model, layers, nat, labels, vis, vl, metric="pearson",
                                  strides=(1, 1, 1), min_gap=0.0, window=3, std_window=1,
                                  dtype=torch.float32)
    assert res.metric == "pearson" and res.n_visualizations == 3 and res.n_natural == 10
    with torch.no_grad():
        acts = layer_activations(model, nat, layers)
        vacts = layer_activations(model, vis, layers)
    for i, name in enumerate(layers):
        ref32 = similarity_groups(acts[name], labels, vacts[name], vl, "pearson", (1, 1, 1),
                                  dtype=torch.float32)
        assert res.upper[i].item() == ref32["upper"].double().mean().item()
        ref64 = similarity_groups(acts[name], labels, vacts[name], vl, "pearson", (1, 1, 1))
        assert res.upper[i].item() != ref64["upper"].mean().item()
    inc = res.included.numpy()
    assert inc.sum() >= 3
    sm = scipy.ndimage.convolve(res.normalized.numpy()[inc], np.ones(3) / 3)
    assert np.allclose(res.smoothed.numpy()[inc], sm, atol=1e-12)
    assert np.allclose((res.band_upper - res.smoothed).numpy()[inc],
                       res.normalized_std.numpy()[inc], atol=1e-12)


def test_sanity_check_without_exclusion_keeps_every_image_and_needs_two():
    g = torch.Generator().manual_seed(13)
    model = _Stack()
    nat = torch.randn(6, 1, 4, 4, generator=g)
    labels = 1 - model(nat).argmax(1)  # every image misclassified
    labels[:2] = 1 - labels[:2]  # ... except the first two
    vis, vl = nat[:2], labels[:2]
    res = similarity_sanity_check(model, ["l1"], nat, labels, vis, vl, metric="cosine",
                                  strides=(1, 1, 1), exclude_misclassified=False)
    assert res.n_natural == 6 and res.n_excluded == 0
    with torch.no_grad():
        a = layer_activations(model, nat, ["l1"])["l1"]
    ref = similarity_groups(a, labels, a[:2], vl, "cosine", (1, 1, 1))
    assert res.upper[0].item() == pytest.approx(ref["upper"].mean().item(), abs=1e-12)
    assert res.lower[0].item() == pytest.approx(ref["lower"].mean().item(), abs=1e-12)
    two = similarity_sanity_check(model, ["l1"], nat, labels, vis, vl, strides=(1, 1, 1))
    assert two.n_natural == 2 and two.n_excluded == 4
    labels[1] = 1 - labels[1]
    with pytest.raises(ValueError, match="only 1 of 6"):
        similarity_sanity_check(model, ["l1"], nat, labels, vis, vl, strides=(1, 1, 1))
    with pytest.raises(ValueError, match="5 labels"):
        similarity_sanity_check(model, ["l1"], nat, labels[:5], vis, vl)
    with pytest.raises(ValueError, match="1 labels"):
        similarity_sanity_check(model, ["l1"], nat, labels, vis, vl[:1])


def test_sanity_check_defaults_are_c3s_gap_and_windows():
    """C.3: layers with a gap of at least 0.01 enter, smoothing windows 7 and 5 (read from
    the result: mutmut keeps the original signature, so ``inspect`` cannot see a mutant)."""
    g = torch.Generator().manual_seed(14)
    model = _Stack((16,) + (12,) * 9 + (2,))
    nat = torch.randn(12, 1, 4, 4, generator=g)
    labels = model(nat).argmax(1)
    vis = torch.randn(4, 1, 4, 4, generator=g)
    vl = torch.tensor([0, 1, 0, 1])
    layers = [f"l{i}" for i in range(9)]
    res = similarity_sanity_check(model, layers, nat, labels, vis, vl, metric="pearson",
                                  strides=(1, 1, 1))
    gap = (res.upper - res.lower).numpy()
    assert res.included.numpy().tolist() == (gap >= 0.01).tolist()
    inc = res.included.numpy()
    assert inc.sum() >= 8 and (gap[inc] < 1.01).any()
    sm = scipy.ndimage.convolve(res.normalized.numpy()[inc], np.ones(7) / 7)
    sd = scipy.ndimage.convolve(res.normalized_std.numpy()[inc], np.ones(5) / 5)
    assert np.allclose(res.smoothed.numpy()[inc], sm, atol=1e-12)
    assert np.allclose((res.band_upper - res.smoothed).numpy()[inc], sd, atol=1e-12)


def test_summary_dict_and_markdown_table_hold_every_layer():
    g = {"upper": torch.tensor([0.75], dtype=torch.float64),
         "lower": torch.tensor([0.25], dtype=torch.float64),
         "fv": torch.tensor([0.375], dtype=torch.float64)}
    h = {"upper": torch.tensor([0.5], dtype=torch.float64),
         "lower": torch.tensor([0.0], dtype=torch.float64),
         "fv": torch.tensor([0.5], dtype=torch.float64)}
    res = summarize_groups(["a", "b.c"], [g, h])
    assert res.summary() == {
        "sanity/score": 0.625, "sanity/normalized/a": 0.25, "sanity/normalized/b.c": 1.0,
        "sanity/raw_upper/a": 0.75, "sanity/raw_lower/a": 0.25, "sanity/raw_fv/a": 0.375,
        "sanity/raw_upper/b.c": 0.5, "sanity/raw_lower/b.c": 0.0, "sanity/raw_fv/b.c": 0.5}
    assert list(res.summary("x"))[0] == "x/score"
    assert res.table() == (
        "| layer | upper (same class) | lower (other class) | fv vs natural | normalized |\n"
        "|---|---|---|---|---|\n"
        "| a | 0.750 | 0.250 | 0.375 | 0.250 |\n"
        "| b.c | 0.500 | 0.000 | 0.500 | 1.000 |")


def test_per_layer_groups_default_to_spearman_on_correctly_classified_images():
    from lightning_fv.analysis.similarity import sanity_check_groups

    g = torch.Generator().manual_seed(15)
    model = _Stack()
    nat = torch.randn(8, 1, 4, 4, generator=g)
    labels = model(nat).argmax(1)
    labels[[2, 5]] = 1 - labels[[2, 5]]  # two misclassified images
    vis, vl = torch.randn(2, 1, 4, 4, generator=g), torch.tensor([0, 1])
    groups, keep = sanity_check_groups(model, ["l2"], nat, labels, vis, vl,
                                       strides=(1, 1, 1))
    assert keep.tolist() == [True, True, False, True, True, False, True, True]
    a = layer_activations(model, nat, ["l2"])["l2"][keep].double().numpy()
    v = layer_activations(model, vis, ["l2"])["l2"].double().numpy()
    kl = labels[keep]
    ref = [ss.spearmanr(a[i], a[j])[0] for i, j in natural_pairs(kl, 1, 1)[0].tolist()]
    fv = [ss.spearmanr(a[i], v[k])[0] for i, k in visualization_pairs(kl, vl, 1).tolist()]
    assert np.allclose(groups["l2"]["upper"].numpy(), ref, atol=1e-10)
    assert np.allclose(groups["l2"]["fv"].numpy(), fv, atol=1e-10)


def test_layers_are_recorded_in_groups_that_fit_the_activation_budget(monkeypatch):
    """``max_activation_bytes`` packs consecutive layers whose float32 activations for all
    images fit it (sizes worked by hand), and the pair values do not change."""
    from lightning_fv.analysis import similarity as sim

    g = torch.Generator().manual_seed(16)
    model = _Stack()  # l0 … l4: 14, 12, 10, 8, 2 values per image
    nat = torch.randn(8, 1, 4, 4, generator=g)
    labels = model(nat).argmax(1)
    vis, vl = torch.randn(2, 1, 4, 4, generator=g), torch.tensor([0, 1])
    names = ["l0", "l1", "l2", "l3", "l4"]
    # 10 images × 4 bytes: 560, 480, 400, 320, 80 bytes
    assert sim.layer_groups(model, nat, names, 10, 1000) == [["l0"], ["l1", "l2"], ["l3", "l4"]]
    assert sim.layer_groups(model, nat, names, 10, 1) == [[n] for n in names]
    assert sim.layer_groups(model, nat, names, 10, None) == [names]
    assert sim.layer_groups(model, nat, names, 10, 1840) == [names]  # exactly the total
    assert sim.layer_groups(model, nat, names[:2], 10, 1) == [["l0"], ["l1"]]  # two split
    with pytest.raises(ValueError, match="max_activation_bytes must be positive"):
        sim.layer_groups(model, nat, names, 10, 0)

    ref, keep_ref = sim.sanity_check_groups(model, names, nat, labels, vis, vl,
                                            strides=(1, 1, 1), max_activation_bytes=None)
    seen: list[list[str]] = []
    record = sim.layer_activations

    def spy(m, images, layers, *args, **kwargs):
        if images.shape[0] > 1:  # not the one-image size probe
            seen.append(list(layers))
        return record(m, images, layers, *args, **kwargs)

    monkeypatch.setattr(sim, "layer_activations", spy)
    got, keep = sim.sanity_check_groups(model, names, nat, labels, vis, vl,
                                        strides=(1, 1, 1), max_activation_bytes=1000)
    # each group: natural images, then visualizations
    assert seen == [["l0"], ["l0"], ["l1", "l2"], ["l1", "l2"], ["l3", "l4"], ["l3", "l4"]]
    seen.clear()  # 1440 bytes = l0 + l1 + l2 for exactly 10 rows (11 would split after l1)
    sim.sanity_check_groups(model, names, nat, labels, vis, vl, strides=(1, 1, 1),
                            max_activation_bytes=1440)
    assert seen == [["l0", "l1", "l2"]] * 2 + [["l3", "l4"]] * 2
    assert torch.equal(keep, keep_ref) and list(got) == names
    for n in names:
        for key in ("upper", "lower", "fv"):
            torch.testing.assert_close(got[n][key], ref[n][key], rtol=0, atol=0)


def test_the_activation_budget_counts_the_ood_images_too(monkeypatch):
    """8 natural + 2 visualizations + 6 OOD images = 16 rows: 896, 768, 640, 512, 128 bytes
    for l0 … l4, so a budget of 1664 groups [l0, l1], [l2, l3, l4] (10, 11 or 17 rows would
    group [l0, l1, l2], [l3, l4] or [l0], [l1, l2], [l3, l4])."""
    from lightning_fv.analysis import similarity as sim

    g = torch.Generator().manual_seed(17)
    model = _Stack()
    nat, ood = torch.randn(8, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    labels, ood_labels = model(nat).argmax(1), model(ood).argmax(1)
    vis, vl = torch.randn(2, 1, 4, 4, generator=g), torch.tensor([0, 1])
    names = ["l0", "l1", "l2", "l3", "l4"]
    seen: list[list[str]] = []
    record = sim.layer_activations

    def spy(m, images, layers, *args, **kwargs):
        if images.shape[0] == 8:  # the natural images' pass of each group
            seen.append(list(layers))
        return record(m, images, layers, *args, **kwargs)

    monkeypatch.setattr(sim, "layer_activations", spy)
    sim.sanity_check_groups(model, names, nat, labels, vis, vl, strides=(1, 1, 1),
                            ood_natural=ood, ood_labels=ood_labels, max_activation_bytes=1664)
    assert seen == [["l0", "l1"], ["l2", "l3", "l4"]]
