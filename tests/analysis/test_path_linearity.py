"""Path linearity (Eq. 12-18) on constructed paths with known answers."""

import math

import pytest
import torch

from lightning_fv.analysis.metrics import PathLinearity, SimilarityGroups
from lightning_fv.analysis.path_linearity import (
    PathLinearityResult,
    aga,
    agpa,
    ald,
    aldp,
    gradient_angles,
    line_distances,
    path_linearity,
    path_metrics,
    summarize,
    top_activating,
)


def test_straight_line_has_zero_ald_and_zero_angles():
    t = torch.linspace(0, 1, 9).view(9, 1, 1)
    direction = torch.tensor([[1.0, 2.0, -2.0]])
    path = t * direction  # (9, 1, 3)
    grads = direction.expand(9, 1, 3) * torch.linspace(1, 3, 9).view(9, 1, 1)
    assert float(ald(path)) == pytest.approx(0.0, abs=1e-12)
    assert float(aga(grads)) == pytest.approx(0.0, abs=1e-5)


def test_right_angle_gradients_give_90_degrees():
    grads = torch.tensor([[[1.0, 0.0]], [[0.0, 2.0]], [[-3.0, 0.0]]])
    assert agpa(grads).tolist() == pytest.approx([90.0, 90.0])
    opposite = torch.tensor([[[1.0, 1.0]], [[-1.0, -1.0]]])
    assert gradient_angles(opposite).item() == pytest.approx(180.0)


def test_right_angle_path_distance_matches_closed_form():
    # (0,0) -> (1,0) -> (1,1): the corner is 1/sqrt(2) from the diagonal of length sqrt(2)
    path = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[1.0, 1.0]]])
    d = line_distances(path)[:, 0]
    assert d.tolist() == pytest.approx([0.0, 0.5, 0.0])
    assert float(ald(path)) == pytest.approx((0.5 + 0.0) / 2)


def test_distance_to_the_segment_not_the_infinite_line():
    path = torch.tensor([[[0.0, 0.0]], [[-1.0, 0.0]], [[2.0, 0.0]]])
    assert line_distances(path)[1, 0].item() == pytest.approx(0.5)


def test_path_metrics_average_over_paths_and_steps():
    g1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # angles 90, 0
    g2 = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]])  # angles 0, 45
    grads = torch.stack([g1, g2], 1)  # (3, 2, 2)
    path = torch.stack([torch.tensor([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]])] * 2, 1)
    m = path_metrics(grads, path)
    assert m["agpa"].tolist() == pytest.approx([45.0, 22.5])
    assert float(m["aga"]) == pytest.approx(33.75)
    assert m["aldp"].tolist() == pytest.approx([0.5, 0.0])


def test_streaming_metric_equals_batch_computation():
    g = torch.Generator().manual_seed(0)
    grads, path = torch.randn(5, 6, 3, 2, 2, generator=g), torch.randn(5, 6, 3, 2, 2, generator=g)
    metric = PathLinearity(steps=5)
    metric.update(grads[:, :2], path[:, :2])
    metric.update(grads[:, 2:], path[:, 2:])
    out, ref = metric.compute(), path_metrics(grads, path)
    assert torch.allclose(out["agpa"], ref["agpa"]) and torch.allclose(out["ald"], ref["ald"])


def test_similarity_groups_metric_normalizes_between_bounds():
    m = SimilarityGroups(num_layers=1)
    m.update(0, {"upper": torch.tensor([0.8, 1.0]), "lower": torch.tensor([0.1, 0.1]),
                 "fv": torch.tensor([0.3, float("nan"), 0.5])})
    out = m.compute()
    assert out["normalized"].item() == pytest.approx((0.4 - 0.1) / (0.9 - 0.1))
    assert out["upper_std"].item() == pytest.approx(0.1)


def test_top_activating_picks_the_highest_unit_values(tiny_net):
    x = torch.rand(10, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    loader = [(x[:4], torch.zeros(4)), (x[4:], torch.zeros(6))]
    imgs, vals, idx = top_activating(tiny_net, "conv2:1", loader, m=3)
    with torch.no_grad():
        ref = tiny_net.conv2(tiny_net.relu1(tiny_net.conv1(x)))[:, 1].mean((1, 2))
    assert idx.tolist() == torch.argsort(ref, descending=True)[:3].tolist()
    assert torch.allclose(vals, ref[idx], atol=1e-6) and torch.equal(imgs, x[idx])


def test_path_linearity_on_a_linear_unit_without_transforms_is_nearly_straight():
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    start = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    res = path_linearity(lin, "1:0", start, steps=6, transforms=None,
                         param={"fft": False, "decorrelate": False, "output": "none"})
    # pixel parameterization + linear objective: constant gradient, so angles are 0
    assert res.aga == pytest.approx(0.0, abs=1e-3)
    assert res.agpa.shape == (5,) and res.aldp.shape == (5,)
    assert math.isfinite(res.ald) and (res.end_values > res.start_values).all()


# ---------------------------------------------------------------- mutation-testing follow-ups
# (docs/testing.md §4); Eq. 12-18 and App. C.4 of `dont-trust-your-eyes…`


def test_opposite_and_equal_gradients_give_exactly_180_and_0_degrees_despite_rounding():
    # for this vector the unit vector's dot product with itself rounds to 1 + 2^-52, so
    # without clamping the cosine arccos would give NaN (Eq. 12 angles lie in [0, 180])
    v = torch.tensor([-1.3985953953708767, 0.4033468476292993, 0.8380263329976598,
                      -0.7192575784693592, -0.40334352493217457], dtype=torch.float64)
    u = v / torch.linalg.vector_norm(v)
    assert (u * u).sum().item() > 1.0 and (u * -u).sum().item() < -1.0
    grads = torch.stack([v, -v, -v])[:, None]  # (3, 1, 5)
    assert gradient_angles(grads)[:, 0].tolist() == [180.0, 0.0]


def test_inputs_without_a_feature_axis_or_with_one_step_are_refused_with_the_shape():
    for bad in (torch.ones(3, 2), torch.ones(1, 2, 3)):
        with pytest.raises(ValueError, match=r"grads must be \(T >= 2, M, \.\.\.\), got shape"):
            gradient_angles(bad)
    with pytest.raises(ValueError, match=r"path must be \(T, M, \.\.\.\), got shape \(3, 2\)"):
        line_distances(torch.ones(3, 2))


def test_a_gradient_no_longer_than_eps_is_zero_and_the_message_names_step_and_path():
    grads = torch.ones(4, 3, 2, dtype=torch.float64)
    grads[2, 1] = torch.tensor([0.5, 0.0])  # norm exactly eps = 0.5
    with pytest.raises(ValueError, match="zero gradient at recorded step 2 of path 1;"):
        gradient_angles(grads, eps=0.5)
    assert gradient_angles(grads, eps=0.49).shape == (3, 3)
    one = torch.ones(3, 1, 2, dtype=torch.float64)
    one[1, 0] = 0.0
    with pytest.raises(ValueError, match="zero gradient at recorded step 1 of path 0;"):
        gradient_angles(one)


def test_distances_use_the_given_start_and_end_and_clamp_beyond_both_ends():
    """Eq. 15-17 by hand: the segment from s = (1, 1) to e = (3, 1) (length 2)."""
    path = torch.tensor([[[2.0, 2.0]], [[0.0, 1.0]], [[4.0, 1.0]], [[5.0, 3.0]]])
    s, e = torch.tensor([[1.0, 1.0]]), torch.tensor([[3.0, 1.0]])
    # (2,2): above the middle, 1 -> 0.5; (0,1): 1 before s -> 0.5; (4,1): 1 past e -> 0.5;
    # (5,3): nearest point e, distance sqrt(8) -> sqrt(2)
    d = line_distances(path, s, e)[:, 0]
    assert d.tolist() == pytest.approx([0.5, 0.5, 0.5, math.sqrt(2)], abs=1e-15)
    assert aldp(path, s, e).tolist() == pytest.approx(d.tolist())
    assert float(ald(path, s, e)) == pytest.approx((1.0 + math.sqrt(2)) / 3)
    # ALD averages the steps after the first: with two points only the second counts
    assert float(ald(path[[0, 3]], s, e)) == pytest.approx(math.sqrt(2))
    # a single point: its own distance
    assert float(ald(path[:1], s, e)) == pytest.approx(0.5)
    # end alone: the segment from path[0] = (2, 2) to (3, 1), length sqrt(2)
    d_end = line_distances(path, end=e)[:, 0]
    assert d_end[1].item() == pytest.approx(math.sqrt(5) / math.sqrt(2))
    d_start = line_distances(path, start=s)[:, 0]  # segment (1,1)-(5,3)
    assert d_start[2].item() == pytest.approx(abs((4 - 1) * 2 - (1 - 1) * 4) / 20)


def test_path_metrics_measure_distances_to_the_given_final_image():
    grads = torch.tensor([[[1.0, 0.0]], [[1.0, 1.0]], [[0.0, 1.0]]])
    path = torch.tensor([[[0.0, 0.0]], [[1.0, 1.0]], [[2.0, 0.0]]])
    end = torch.tensor([[4.0, 0.0]])  # the image after the last recorded step
    m = path_metrics(grads, path, end)
    # segment (0,0)-(4,0), length 4: (1,1) -> 1/4, (2,0) -> 0
    assert m["aldp"].tolist() == pytest.approx([0.25, 0.0])
    assert float(m["ald"]) == pytest.approx(0.125)
    assert m["agpa"].tolist() == pytest.approx([45.0, 45.0])


def test_short_and_degenerate_segments():
    path = torch.tensor([[[0.0]], [[0.25]], [[0.5]]], dtype=torch.float64)
    # a segment of length 0.5 < 1 is fine: only lengths up to eps = 1e-12 are degenerate
    assert line_distances(path).tolist() == [[0.0], [0.0], [0.0]]
    path = torch.zeros(2, 3, 1, dtype=torch.float64)
    path[1, 0, 0], path[1, 1, 0], path[1, 2, 0] = 1.0, 1e-12, 2.0
    with pytest.raises(ValueError, match="path 1 ends where it starts"):
        line_distances(path)
    with pytest.raises(ValueError, match=r"start/end must be \(M, \.\.\.\)"):
        line_distances(path, start=torch.zeros(2, 1), end=torch.zeros(3, 1))


def test_summarize_is_the_mean_over_units_and_nan_for_none():
    out = summarize([])
    assert set(out) == {"aga", "ald"} and math.isnan(out["aga"]) and math.isnan(out["ald"])
    rs = [PathLinearityResult("a", None, 10.0, None, 0.5, None, None, None),
          PathLinearityResult("b", None, 40.0, None, 0.25, None, None, None)]
    assert summarize(rs) == {"aga": 25.0, "ald": 0.375}


def test_top_activating_default_m_is_20_keeps_ties_in_index_order_and_allows_m_1(tiny_net):
    x = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    x = torch.cat([x, x, x, x])  # 32 images, every value four times
    imgs, vals, idx = top_activating(tiny_net, "conv2:1", x)
    assert idx.shape == (20,)
    v = vals.tolist()
    assert v == sorted(v, reverse=True)
    for a, b in zip(idx.tolist(), idx.tolist()[1:]):  # equal values: lower index first
        if vals[idx.tolist().index(a)] == vals[idx.tolist().index(b)]:
            assert a < b
    assert idx[:4].tolist() == sorted(idx[:4].tolist())
    assert (idx[:4] % 8).unique().numel() == 1
    one = top_activating(tiny_net, "conv2:1", x, m=1)[2]
    assert one.tolist() == idx[:1].tolist()


def _conv_unit_net():
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv2d(4, 2, 3, padding=1))


def test_path_linearity_measures_the_render_trajectory_to_the_final_image():
    from lightning_fv.optvis.hooks import parse_unit
    from lightning_fv.optvis.objectives import units_objective
    from lightning_fv.optvis.render import render

    net = _conv_unit_net()
    start = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.25
    kw = dict(transforms=None, param={"fft": False, "decorrelate": False, "output": "none"})
    res = path_linearity(net, "2:1", start, steps=2, **kw)
    u = parse_unit("2:1")
    ref = render(net, units_objective([u] * 2), init_images=start, thresholds=(0, 2),
                 record="all", record_grads=True, seed=0, **kw)
    m = path_metrics(ref.trajectory.grads, ref.trajectory.images, ref.images[2])
    assert res.unit == "2:1" and res.angles.shape == (1, 2)
    assert res.angles.tolist() == m["angles"].float().tolist()
    assert res.ald == float(m["ald"]) and res.aldp.tolist() == m["aldp"].float().tolist()
    assert res.ald > 0  # a curved path: the final image is not the last recorded one
    m_last = path_metrics(ref.trajectory.grads, ref.trajectory.images)
    assert float(m_last["ald"]) != res.ald


def test_path_linearity_uses_its_seed_for_the_transforms_and_c4_defaults():
    net = _conv_unit_net()
    start = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 0.5 + 0.25
    a = path_linearity(net, "2:0", start, steps=3)
    b = path_linearity(net, "2:0", start, steps=3, seed=0)
    c = path_linearity(net, "2:0", start, steps=3, seed=1)
    assert a.angles.tolist() == b.angles.tolist() and a.angles.tolist() != c.angles.tolist()
    # C.4: N = 512 steps by default (checked on the result: mutmut keeps the signature)
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 2))
    res = path_linearity(lin, "1:0", start[:, :, :4, :4], transforms=None,
                         param={"fft": False, "decorrelate": False, "output": "none"})
    assert res.agpa.shape == (511,) and res.aldp.shape == (511,)
