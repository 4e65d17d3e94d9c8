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


# --------------------------------------------------------------------------- image grids


def test_unlabelled_grid_is_the_plain_tiling_pixel_for_pixel():
    from lightning_fv.utils.images import image_grid

    x = torch.rand(5, 3, 6, 4, generator=torch.Generator().manual_seed(0))
    g = image_grid(x, nrow=3)
    assert g.shape == (3, 2 * (6 + 2) + 2, 3 * (4 + 2) + 2)
    assert torch.equal(g[:, 2:8, 2:6], x[0]) and torch.equal(g[:, 10:16, 8:12], x[4])
    assert torch.equal(g[:, 0], torch.ones(3, g.shape[2]))  # padding keeps pad_value


def test_labelled_grid_grows_by_the_caption_band_and_writes_text_in_it():
    from lightning_fv.utils.images import image_grid

    x = torch.full((4, 3, 40, 40), 0.5)
    plain = image_grid(x, nrow=2)
    lab = image_grid(x, nrow=2, labels=["fc:0", "fc:1", "fc:2", "fc:3"], values=[1, 2, 3, 4],
                     font_size=10)
    band = 2 * (10 + 3) + 2  # two lines (label, value) of 13 px, 2 px margin
    assert lab.shape == (3, plain.shape[1] + 2 * band, plain.shape[2])
    # tiles are untouched, the band under tile 0 holds dark text pixels on white
    assert torch.equal(lab[:, 2:42, 2:42], x[0])
    caption = lab[:, 42:42 + band, 2:42]
    assert caption.min() < 0.5 and (caption == 1.0).float().mean() > 0.3
    # another label changes that caption only
    other = image_grid(x, nrow=2, labels=["fc:9", "fc:1", "fc:2", "fc:3"], values=[1, 2, 3, 4],
                       font_size=10)
    assert not torch.equal(other[:, 42:42 + band, 2:42], caption)
    assert torch.equal(other[:, 42:42 + band, 44:84], lab[:, 42:42 + band, 44:84])


def test_tile_size_enlarges_by_an_integer_factor_with_nearest_pixels():
    from lightning_fv.utils.images import image_grid

    x = torch.rand(1, 3, 16, 12, generator=torch.Generator().manual_seed(1))
    g = image_grid(x, tile_size=128)  # factor ceil(128 / 12) = 11
    assert g.shape == (3, 16 * 11 + 4, 12 * 11 + 4)
    assert torch.equal(g[:, 2:2 + 11, 2:2 + 11], x[0, :, 0, 0][:, None, None].expand(3, 11, 11))


def test_grid_captions_must_match_the_number_of_images():
    import pytest

    from lightning_fv.utils.images import image_grid

    with pytest.raises(ValueError, match=r"labels has 1 entries but there are 2 images"):
        image_grid(torch.rand(2, 3, 4, 4), labels=["a"])
    with pytest.raises(ValueError, match=r"row_labels has 3 entries but there are 1 rows"):
        image_grid(torch.rand(2, 3, 4, 4), nrow=2, row_labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="tile_size must be >= 1"):
        image_grid(torch.rand(2, 3, 4, 4), tile_size=0)


def test_ifv_figure_lives_in_analysis_and_the_old_import_path_still_works():
    from lightning_fv.analysis.figures import ifv_figure
    from lightning_fv.callbacks.inverse_fv import ifv_figure as old
    from lightning_fv.ifv.experiment import IFVResult

    assert old is ifv_figure
    n = 4
    angles = {k: torch.tensor([10.0, 20.0, 30.0, 40.0]) for k in
              ("predicted", "target", "response", "random")}
    res = IFVResult(k=2.0, layer="block1", targets=torch.rand(n, 5), sparsity=torch.rand(n),
                    images=torch.rand(n, 3, 8, 8), responses=torch.rand(n, 5),
                    objectives={k: torch.rand(n, 5) for k in angles}, angles=angles,
                    alpha=torch.tensor([0.5, 0.3, 0.2]), residual=torch.rand(n),
                    target_residual=torch.rand(n))
    fig = ifv_figure(res, "t")
    bar, hist, scatter = fig.axes
    assert bar.get_title() == "t" and hist.get_ylabel() == "count"
    assert scatter.get_ylabel() == "Grad-IFV residual"  # no re-optimization: residuals
    assert figure_to_array(fig).shape[2] == 3
