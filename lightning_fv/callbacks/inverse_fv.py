"""``InverseFeatureVisualizationCallback``: Grad-IFV checks during training (§3.4, Fig. 2).

At the end of validation (every ``every_n_epochs`` epochs, sanity check skipped) and of
testing, rank zero samples ``n_targets`` sparse target objectives on ``layer`` (S2),
visualizes them with the cosine-power objective, predicts their targets with Grad-IFV and
logs the predicted-objective angle, the feature-response angle, the random-objective angle,
α₁ and the SSIM after re-optimization for each objective kind, plus a Fig. 2-style figure
(angle vs SSIM scatter with margins and the α_j bars) and the realizations. All the
science is :func:`lightning_fv.ifv.run_ifv`; this file only schedules and logs.

The model's training mode, ``requires_grad`` flags and ``.grad`` and the global RNG states
are restored; it runs under ``inference_mode=True`` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import nn

from lightning_fv.ifv.experiment import KINDS, IFVResult, run_ifv
from lightning_fv.optvis.hooks import get_layer, preserved_state
from lightning_fv.utils.images import image_grid, save_png
from lightning_fv.utils.rng import preserved_rng

COLORS = {"predicted": "tab:blue", "target": "tab:green", "response": "tab:orange",
          "random": "tab:gray"}


def ifv_figure(result: IFVResult, title: str = "") -> Any:
    """Fig. 2-style figure: (top) stacked α_1…α_10 bar; (bottom) angular distance to the
    targets (x, degrees) vs SSIM after re-optimization (y) per objective kind, with the
    angle histograms as the top margin and the 0.7 instability line."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(6.4, 6.0))
    gs = fig.add_gridspec(3, 1, height_ratios=[0.5, 1.2, 3.0], hspace=0.45)
    ax_a = fig.add_subplot(gs[0])
    alpha = result.alpha[:10].tolist()
    left = 0.0
    cmap = plt.get_cmap("viridis")
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
        ax_h.hist(result.angles[kind].tolist(), bins=bins, alpha=0.55, color=COLORS[kind],
                  label=kind)
    ax_h.legend(fontsize=7, ncols=3)
    ax_h.set_ylabel("count", fontsize=8)
    if result.ssim:
        for kind in KINDS:
            ax_s.scatter(result.angles[kind].tolist(), result.ssim[kind].tolist(), s=14,
                         alpha=0.7, color=COLORS[kind], label=kind)
        ax_s.axhline(0.7, color="red", ls="--", lw=1)
        ax_s.set_ylabel("SSIM after re-optimization", fontsize=8)
        ax_s.legend(fontsize=7, loc="lower left")
    else:
        ax_s.scatter(result.angles["predicted"].tolist(), result.residual.tolist(), s=14,
                     color=COLORS["predicted"])
        ax_s.set_ylabel("Grad-IFV residual", fontsize=8)
    ax_s.set_xlim(0, 90)
    ax_s.set_xlabel("angular distance to target objective (degrees)", fontsize=8)
    return fig


class InverseFeatureVisualizationCallback(L.Callback):
    """Run the Grad-IFV experiment of `inverse-feature-visualization` §3.4 on ``layer``.

    Args:
        layer: module name inside the LightningModule (e.g. ``"model.block2.bn"``), or inside
            its ``module`` sub-module when given (``layer="block2.bn", module="model"``).
        n_targets: sampled (Hoyer-sparse, S2) target objectives.
        n_canonical: extra canonical targets ``e_i``.
        k: cosine power of the objective (§2; 0 drops the cosine term).
        steps: Adam steps of the visualizations; ``lbfgs_steps`` L-BFGS fine-tuning (§3.2).
        reopt_steps: Adam steps of the re-optimization (0 skips SSIM).
        image_size: side of the images (pixels, [0, 1] RGB input).
        aggregation: §2.3 aggregation (``maxpool_mean``, ``mean``, ``center``, ``identity``).
        every_n_epochs: run after validation every this many epochs (0: only at test end).
        seed: seed of targets and visualizations.
        module: attribute of the LightningModule holding the network (``None``: the
            LightningModule itself).
        log_images: also log the grid of realizations.
    """

    def __init__(
        self,
        layer: str,
        n_targets: int = 16,
        n_canonical: int = 0,
        k: float = 2.0,
        steps: int = 256,
        lbfgs_steps: int = 50,
        reopt_steps: int = 100,
        image_size: int = 64,
        aggregation: str = "maxpool_mean",
        every_n_epochs: int = 1,
        seed: int = 0,
        module: str | None = None,
        log_images: bool = True,
    ) -> None:
        super().__init__()
        if n_targets + n_canonical < 1:
            raise ValueError(f"need at least one target, got n_targets={n_targets}, "
                             f"n_canonical={n_canonical}")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        if k < 0:
            raise ValueError(f"cosine power k must be >= 0, got {k}")
        self.layer, self.n_targets, self.n_canonical, self.k = layer, n_targets, n_canonical, k
        self.steps, self.lbfgs_steps, self.reopt_steps = steps, lbfgs_steps, reopt_steps
        self.image_size, self.aggregation = image_size, aggregation
        self.every_n_epochs, self.seed = every_n_epochs, seed
        self.module, self.log_images = module, log_images
        self.history: list[dict[str, float]] = []
        self.last_result: IFVResult | None = None

    # -- hooks ---------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        get_layer(self._network(pl_module), self.layer)  # fail early with close names

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs == 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run(trainer, pl_module, "test")

    # -- work ----------------------------------------------------------------------------
    def _network(self, pl_module: L.LightningModule) -> nn.Module:
        if self.module is None:
            return pl_module
        net = getattr(pl_module, self.module, None)
        if not isinstance(net, nn.Module):
            raise AttributeError(f"{type(pl_module).__name__} has no nn.Module attribute "
                                 f"{self.module!r}")
        return net

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not trainer.is_global_zero:
            return
        net = self._network(pl_module)
        with preserved_rng(), preserved_state(net, frozen=False, eval_mode=False), \
                torch.inference_mode(False):
            result = run_ifv(net, self.layer, self.n_targets, n_canonical=self.n_canonical,
                             k=self.k, steps=self.steps, lbfgs_steps=self.lbfgs_steps,
                             reopt_steps=self.reopt_steps, image_size=self.image_size,
                             aggregation=self.aggregation, seed=self.seed)
        self.last_result = result
        metrics = {f"ifv/{stage}/{k}": v for k, v in result.summary().items()}
        self.history.append({"epoch": float(trainer.current_epoch), **metrics})
        self._log(trainer, metrics, result, stage)

    @rank_zero_only
    def _log(self, trainer: L.Trainer, metrics: dict[str, float], result: IFVResult,
             stage: str) -> None:
        import matplotlib.pyplot as plt

        step = trainer.global_step
        fig = ifv_figure(result, f"Grad-IFV {self.layer} k={self.k:g} epoch "
                                 f"{trainer.current_epoch}")
        grid = image_grid(result.images)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_figure"):
                exp.add_figure(f"ifv/{stage}/angles_ssim", fig, global_step=step, close=False)
                if self.log_images:
                    exp.add_image(f"ifv/{stage}/realizations", grid, global_step=step)
            else:
                out = Path(getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
                           or trainer.default_root_dir) / "ifv"
                out.mkdir(parents=True, exist_ok=True)
                fig.savefig(out / f"{stage}_angles_ssim_step{step}.png", dpi=100)
                if self.log_images:
                    save_png(grid, out / f"{stage}_realizations_step{step}.png")
        if not trainer.loggers:
            out = Path(trainer.default_root_dir) / "ifv"
            out.mkdir(parents=True, exist_ok=True)
            fig.savefig(out / f"{stage}_angles_ssim_step{step}.png", dpi=100)
        plt.close(fig)

    # -- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]


__all__ = ["InverseFeatureVisualizationCallback", "ifv_figure"]
