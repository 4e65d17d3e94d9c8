"""Path linearity (Eq. 12-18) on constructed paths with known answers."""

import math

import pytest
import torch

from lightning_fv.analysis.metrics import PathLinearity, SimilarityGroups
from lightning_fv.analysis.path_linearity import (
    aga,
    agpa,
    ald,
    gradient_angles,
    line_distances,
    path_linearity,
    path_metrics,
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
