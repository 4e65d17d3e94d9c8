"""Matplotlib figures of the analysis results, returned to the caller (never shown).

- :func:`sanity_check_figure`: Fig. 6/7 style (`dont-trust-your-eyes…` §3, App. C.3):
  raw similarities of the three groups per layer, and the normalized curve with the
  smoothed line and the ±1 std band.
- :func:`agpa_figure`: ``AGPA_j`` over steps per unit (App. C.4, Fig. 12).
- :func:`ifv_figure`: the Grad-IFV Fig. 2 (`inverse-feature-visualization` §3.4): α_j
  bar, angle histograms and angle vs SSIM scatter per objective kind.

matplotlib is imported lazily (the ``Agg``-backed :class:`~matplotlib.figure.Figure`,
no pyplot state), so importing :mod:`lightning_fv.analysis` does not need it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from lightning_fv.analysis.similarity import SanityCheckResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lightning_fv.ifv.experiment import IFVResult

#: Colour of each Grad-IFV objective kind in :func:`ifv_figure`.
IFV_COLORS = {"predicted": "tab:blue", "target": "tab:green", "response": "tab:orange",
              "random": "tab:gray"}


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    return fig, axes


def sanity_check_figure(result: SanityCheckResult, title: str | None = None) -> Figure:
    """Raw (left) and normalized (right) similarity per layer, layer names on the x-axis.

    Colours as in the paper: green = natural vs natural same class (upper bound), black =
    natural vs natural other class (lower bound), orange = natural vs feature
    visualization of the same class; blue band = ±1 smoothed std around the smoothed
    normalized curve (C.3).
    """
    n = len(result.layers)
    fig, (ax_raw, ax_norm) = _figure(max(8.0, 1.0 + 0.9 * n), 4.2, ncols=2)
    x = np.arange(n)
    for vals, std, color, label in (
        (result.upper, result.upper_std, "tab:green", "natural vs natural, same class"),
        (result.lower, result.lower_std, "black", "natural vs natural, other class"),
        (result.fv, result.fv_std, "tab:orange", "natural vs visualization, same class"),
    ):
        ax_raw.errorbar(x, vals.numpy(), yerr=std.numpy(), fmt="o-", color=color, ms=4,
                        capsize=2, label=label)
    ax_raw.set_ylabel(f"{result.metric} similarity (raw)")
    ax_raw.set_title("absolute similarity" + (" (OOD bounds)" if result.ood else ""))
    ax_raw.legend(fontsize=7, loc="best")
    inc = result.included.numpy()
    xi = x[inc]
    ax_norm.axhline(1.0, color="tab:green", lw=1, ls="--", label="same class (=1)")
    ax_norm.axhline(0.0, color="black", lw=1, ls="--", label="other class (=0)")
    ax_norm.plot(xi, result.normalized.numpy()[inc], "o", color="tab:orange", ms=4,
                 label="visualization vs natural")
    ax_norm.plot(xi, result.smoothed.numpy()[inc], "-", color="tab:orange", lw=2,
                 label="smoothed (window 7)")
    ax_norm.fill_between(xi, result.band_lower.numpy()[inc], result.band_upper.numpy()[inc],
                         color="tab:blue", alpha=0.2, label="±1 std (window 5)")
    ax_norm.set_ylabel("normalized similarity")
    ax_norm.set_title(f"normalized (score {result.score:.2f})")
    ax_norm.legend(fontsize=7, loc="best")
    for ax in (ax_raw, ax_norm):
        ax.set_xticks(x)
        ax.set_xticklabels(result.layers, rotation=45, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def agpa_figure(agpa: Mapping[str, Tensor], title: str | None = None) -> Figure:
    """``AGPA_j`` (degrees) against the step ``j`` for each unit (C.4, Eq. 13)."""
    fig, (ax,) = _figure(6.0, 4.0)
    for name, curve in agpa.items():
        c = curve.detach().float().cpu().numpy()
        ax.plot(np.arange(1, c.size + 1), c, lw=1.2, label=name)
    ax.set_xlabel("step j")
    ax.set_ylabel("AGPA_j (degrees)")
    ax.set_ylim(0, 180)
    ax.grid(alpha=0.3)
    if 0 < len(agpa) <= 12:
        ax.legend(fontsize=7)
    ax.set_title(title or "average gradient path angle")
    fig.tight_layout()
    return fig


def ifv_figure(result: IFVResult, title: str = "") -> Figure:
    """Fig. 2-style figure of a Grad-IFV run (`inverse-feature-visualization` §3.4).

    Top: stacked α_1…α_10 bar (fractions, x in [0, 1]). Middle: histograms of the angular
    distance (degrees) of the predicted, response and random objectives to the targets.
    Bottom: angle (x, degrees) vs SSIM after re-optimization (y) per objective kind with
    the 0.7 instability line, or vs the Grad-IFV residual when re-optimization was skipped.
    """
    from matplotlib import colormaps

    from lightning_fv.ifv.experiment import KINDS

    fig, _ = _figure(6.4, 6.0, ncols=0)
    gs = fig.add_gridspec(3, 1, height_ratios=[0.5, 1.2, 3.0], hspace=0.45)
    ax_a = fig.add_subplot(gs[0])
    alpha = result.alpha[:10].tolist()
    left = 0.0
    cmap = colormaps["viridis"]
    for j, a in enumerate(alpha):
        ax_a.barh(0, a, left=left, color=cmap(j / 9), edgecolor="white")
        if a > 0.06:
            ax_a.text(left + a / 2, 0, f"α{j + 1}", ha="center", va="center", fontsize=7,
                      color="white")
        left += a
    ax_a.set_xlim(0, 1)
    ax_a.set_yticks([])
    ax_a.set_title(title or f"Grad-IFV on {result.layer} (k={result.k:g})", fontsize=9)
    ax_h = fig.add_subplot(gs[1])
    ax_s = fig.add_subplot(gs[2], sharex=ax_h)
    bins = torch.linspace(0, 90, 31).tolist()
    for kind in ("predicted", "response", "random"):
        ax_h.hist(result.angles[kind].tolist(), bins=bins, alpha=0.55,
                  color=IFV_COLORS[kind], label=kind)
    ax_h.legend(fontsize=7, ncols=3)
    ax_h.set_ylabel("count", fontsize=8)
    if result.ssim:
        for kind in KINDS:
            ax_s.scatter(result.angles[kind].tolist(), result.ssim[kind].tolist(), s=14,
                         alpha=0.7, color=IFV_COLORS[kind], label=kind)
        ax_s.axhline(0.7, color="red", ls="--", lw=1)
        ax_s.set_ylabel("SSIM after re-optimization", fontsize=8)
        ax_s.legend(fontsize=7, loc="lower left")
    else:
        ax_s.scatter(result.angles["predicted"].tolist(), result.residual.tolist(), s=14,
                     color=IFV_COLORS["predicted"])
        ax_s.set_ylabel("Grad-IFV residual", fontsize=8)
    ax_s.set_xlim(0, 90)
    ax_s.set_xlabel("angular distance to target objective (degrees)", fontsize=8)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render ``fig`` to an ``(H, W, 3)`` uint8 RGB array."""
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
