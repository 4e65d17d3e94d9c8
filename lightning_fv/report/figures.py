"""The report's own small figures and PNG encoding (the edge layer: matplotlib, PIL).

The sanity-check curves and the AGPA curves come from :mod:`lightning_fv.analysis.figures`;
this module adds what the analysis package does not draw: labelled tile grids, the
per-unit path-linearity bars and the detector's per-layer bars. Every function returns an
Agg-backed :class:`~matplotlib.figure.Figure` (no pyplot state) or PNG bytes.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1) -> tuple[Figure, list]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(nrows, ncols, i + 1) for i in range(nrows * ncols)]
    return fig, axes


def image_png(image: Tensor, scale: int = 1) -> bytes:
    """Encode one ``(C, H, W)`` image in [0, 1] RGB (``C`` = 1 or 3) as 8-bit PNG bytes,
    optionally enlarged ``scale`` times with nearest-neighbour sampling."""
    from PIL import Image

    if image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must be (1 or 3, H, W), got shape {tuple(image.shape)}")
    if scale < 1:
        raise ValueError(f"scale must be an integer >= 1, got {scale}")
    arr = (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr[0] if arr.shape[0] == 1 else arr.permute(1, 2, 0)
    pil = Image.fromarray(arr.contiguous().numpy())
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def figure_png(fig: Figure, dpi: int = 100) -> bytes:
    """PNG bytes of a matplotlib figure; the figure is cleared afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    fig.clear()
    return buf.getvalue()


def labelled_grid_figure(images: Tensor, captions: Sequence[str], ncols: int | None = None,
                         title: str | None = None) -> Figure:
    """Tiles of ``(N, C, H, W)`` images in [0, 1] with one caption under each tile
    (e.g. ``"block3:5\\n2.31"``: unit name and objective value)."""
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n = images.shape[0]
    if len(captions) != n:
        raise ValueError(f"got {len(captions)} captions for {n} images")
    ncols = ncols or max(1, min(n, 8))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = _figure(1.6 * ncols, 1.95 * nrows + (0.3 if title else 0), nrows, ncols)
    for k, ax in enumerate(axes):
        ax.set_axis_off()
        if k >= n:
            continue
        img = images[k].detach().float().cpu().clamp(0, 1)
        arr = img.permute(1, 2, 0).numpy() if img.shape[0] == 3 else img[0].numpy()
        ax.imshow(arr, cmap=None if img.shape[0] == 3 else "gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(captions[k], fontsize=7, y=-0.02, va="top")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def path_linearity_figure(units: Sequence[str], aga: Sequence[float], ald: Sequence[float],
                          layers: Sequence[str]) -> Figure:
    """Bars of AGA (degrees, Eq. 14) and ALD (dimensionless, Eq. 18) per unit, coloured by
    the unit's layer (`dont-trust-your-eyes…` §5, App. C.4)."""
    if not (len(units) == len(aga) == len(ald) == len(layers)):
        raise ValueError(f"units, aga, ald and layers differ in length: {len(units)}, "
                         f"{len(aga)}, {len(ald)}, {len(layers)}")
    fig, (ax_a, ax_d) = _figure(max(6.0, 1.0 + 0.55 * len(units)), 3.6, ncols=2)
    order = list(dict.fromkeys(layers))
    cmap = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
            "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
    colors = [cmap[order.index(lay) % len(cmap)] for lay in layers]
    x = np.arange(len(units))
    ax_a.bar(x, np.asarray(aga, dtype=float), color=colors)
    ax_a.set_ylabel("AGA (degrees)")
    ax_a.set_title("average gradient angle (lower = straighter)")
    ax_d.bar(x, np.asarray(ald, dtype=float), color=colors)
    ax_d.set_ylabel("ALD (relative to ‖x_f − x_s‖)")
    ax_d.set_title("average line distance (0 = straight line)")
    for ax in (ax_a, ax_d):
        ax.set_xticks(x)
        ax.set_xticklabels(list(units), rotation=45, ha="right", fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def detector_figure(layers: Sequence[str], fractions: Sequence[float],
                    natural_fraction: float | None = None) -> Figure:
    """Fraction of renders per layer that the detector calls natural (App. C.1), with the
    fraction of natural images called natural as a dashed reference line."""
    if len(layers) != len(fractions):
        raise ValueError(f"got {len(fractions)} fractions for {len(layers)} layers")
    fig, (ax,) = _figure(max(4.5, 1.0 + 0.8 * len(layers)), 3.4)
    x = np.arange(len(layers))
    ax.bar(x, np.asarray(fractions, dtype=float), color="tab:orange",
           label="feature visualizations")
    if natural_fraction is not None and math.isfinite(natural_fraction):
        ax.axhline(natural_fraction, color="tab:green", ls="--", lw=1.2,
                   label="natural images")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("fraction called natural")
    ax.set_xticks(x)
    ax.set_xticklabels(list(layers), rotation=30, ha="right", fontsize=8)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


__all__ = ["detector_figure", "figure_png", "image_png", "labelled_grid_figure",
           "path_linearity_figure"]
