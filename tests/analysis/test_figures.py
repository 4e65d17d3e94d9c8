"""Figures: the sanity-check curve (raw + normalized, layer names) and the AGPA curve."""

import torch

from lightning_fv.analysis.figures import agpa_figure, figure_to_array, sanity_check_figure
from lightning_fv.analysis.similarity import summarize_groups


def _result():
    g = torch.Generator().manual_seed(0)
    groups = [{"upper": 0.8 + 0.01 * torch.randn(5, generator=g),
               "lower": 0.2 + 0.01 * torch.randn(5, generator=g),
               "fv": 0.2 + 0.1 * k + 0.01 * torch.randn(5, generator=g)} for k in range(4)]
    return summarize_groups(["a", "b", "c", "d"], groups)


def test_sanity_figure_has_raw_and_normalized_panels_with_layer_names():
    fig = sanity_check_figure(_result(), title="t")
    raw, norm = fig.axes
    assert [t.get_text() for t in raw.get_xticklabels()] == ["a", "b", "c", "d"]
    assert [t.get_text() for t in norm.get_xticklabels()] == ["a", "b", "c", "d"]
    # raw: three error-bar series (upper, lower, fv); normalized: points + smoothed line
    assert len(raw.containers) == 3
    ys = norm.lines[2].get_ydata()  # normalized points (after the two reference lines)
    assert abs(ys[0] - 0.0) < 0.1 and abs(ys[3] - 0.5) < 0.1
    arr = figure_to_array(fig)
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype.name == "uint8"


def test_agpa_figure_plots_one_curve_per_unit_against_steps():
    fig = agpa_figure({"fc:0": torch.tensor([10.0, 20.0, 30.0]), "fc:1": torch.zeros(3)})
    (ax,) = fig.axes
    assert len(ax.lines) == 2 and list(ax.lines[0].get_xdata()) == [1, 2, 3]
    assert list(ax.lines[0].get_ydata()) == [10.0, 20.0, 30.0]
