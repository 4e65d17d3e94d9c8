"""``InverseFeatureVisualizationCallback``: Grad-IFV checks during training (§3.4, Fig. 2).

At the end of validation (every ``every_n_epochs`` epochs, sanity check skipped) and of
testing, rank zero samples ``n_targets`` sparse target objectives on ``layer`` (S2),
visualizes them with the cosine-power objective, predicts their targets with Grad-IFV and
logs the predicted-objective angle, the feature-response angle, the random-objective angle,
α₁ and the SSIM after re-optimization for each objective kind, plus a Fig. 2-style figure
(angle vs SSIM scatter with margins and the α_j bars) and the realizations. All the
science is :func:`lightning_fv.ifv.run_ifv` and the figure
:func:`lightning_fv.analysis.figures.ifv_figure`; this file only schedules and logs, through
the shared :class:`~lightning_fv.callbacks._scheduled.ScheduledCallback` template.

The model's training mode, ``requires_grad`` flags and ``.grad`` and the global RNG states
are restored; it runs under ``inference_mode=True`` too.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch

from lightning_fv.analysis.figures import IFV_COLORS as COLORS
from lightning_fv.analysis.figures import ifv_figure
from lightning_fv.callbacks._logging import log_figure, log_grid, log_scalars
from lightning_fv.callbacks._scheduled import ScheduledCallback
from lightning_fv.ifv.experiment import KINDS, IFVResult, run_ifv


class InverseFeatureVisualizationCallback(ScheduledCallback):
    """Run the Grad-IFV experiment of `inverse-feature-visualization` §3.4 on ``layer``.

    Logged (rank zero, every logger): the scalars of :meth:`IFVResult.summary` as
    ``<log_prefix>/<stage>/<name>`` (``stage`` = ``val`` after validation, ``test`` after
    testing), the Fig. 2-style figure ``<log_prefix>/<stage>/angles_ssim`` and, with
    ``log_images``, the captioned realizations ``<log_prefix>/<stage>/realizations``.
    ``state_key`` names ``log_prefix``, ``layer`` and ``k``, so two instances keep
    separate histories in a checkpoint (give them different ``log_prefix`` es so that
    their logged tags differ too).

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
        module: attribute path of the network in the LightningModule (``""``, or ``None``
            as in earlier configs: the LightningModule itself).
        log_images: also log the grid of realizations.
        log_prefix: tag prefix.
        tile_size: logged realizations are enlarged to at least this many pixels
            (``None``: raw pixels).
        on_error: ``"warn"`` (report a failure every time; training goes on) or ``"raise"``.
    """

    key_args: ClassVar[tuple[str, ...]] = ("log_prefix", "layer", "k")
    at_test_end = True

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
        module: str | None = "",
        log_images: bool = True,
        log_prefix: str = "ifv",
        tile_size: int | None = 128,
        on_error: str = "warn",
    ) -> None:
        super().__init__()
        if n_targets + n_canonical < 1:
            raise ValueError(f"need at least one target, got n_targets={n_targets}, "
                             f"n_canonical={n_canonical}")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        if k < 0:
            raise ValueError(f"cosine power k must be >= 0, got {k}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        self.layer, self.n_targets, self.n_canonical, self.k = layer, n_targets, n_canonical, k
        self.steps, self.lbfgs_steps, self.reopt_steps = steps, lbfgs_steps, reopt_steps
        self.image_size, self.aggregation = image_size, aggregation
        self.every_n_epochs, self.seed = every_n_epochs, seed
        self.module, self.log_images = module or "", log_images
        self.log_prefix, self.tile_size, self.on_error = log_prefix, tile_size, on_error
        self.history: list[dict[str, Any]] = []
        self.last_result: IFVResult | None = None

    # -- the template --------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.check_units(pl_module, [f"{self.layer}:0"], self.module)  # closest names

    def _keys(self) -> list[str]:
        """The names of :meth:`IFVResult.summary` for these settings, in its order."""
        keys = ["alpha_1"]
        for kind in ("predicted", "response", "random"):
            keys += [f"angle_{kind}_mean_deg", f"angle_{kind}_median_deg"]
        if self.reopt_steps > 0:
            for kind in KINDS:
                keys += [f"ssim_{kind}_mean", f"unstable_{kind}_fraction"]
        return keys

    def items(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
        return [self.layer]  # one experiment: rank zero runs it

    def shapes(self, items: list[str], trainer: L.Trainer, pl_module: L.LightningModule
               ) -> dict[str, tuple[int, ...]]:
        n = self.n_targets + self.n_canonical
        return {"summary": (len(self._keys()),),
                "images": (n, 3, self.image_size, self.image_size)}

    def describe(self, items: list[str]) -> str:
        return f"Grad-IFV on layer {self.layer!r}"

    def compute(self, net: torch.nn.Module, items: list[str], trainer: L.Trainer,
                pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        result = run_ifv(net, self.layer, self.n_targets, n_canonical=self.n_canonical,
                         k=self.k, steps=self.steps, lbfgs_steps=self.lbfgs_steps,
                         reopt_steps=self.reopt_steps, image_size=self.image_size,
                         aggregation=self.aggregation, seed=self.seed)
        self.last_result = result
        summary = result.summary()
        return {"summary": torch.tensor([[summary[k] for k in self._keys()]],
                                        dtype=torch.float64),
                "images": result.images[None].float()}

    @staticmethod
    def _stage(tag: str) -> str:
        return "test" if tag == "test" else "val"

    def summarize(self, items: list[str], results: dict[str, torch.Tensor],
                  done: torch.Tensor) -> dict[str, Any]:
        return {}

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str = "manual"
            ) -> dict[str, Any]:
        entry = super().run(trainer, pl_module, tag)
        self.history.pop()  # keep the flat history format: {"epoch", "<prefix>/<stage>/…"}
        if not entry["errors"]:
            self.history.append({"epoch": float(trainer.current_epoch),
                                 **entry.get("metrics", {})})
        return entry

    def log_results(self, trainer: L.Trainer, entry: dict[str, Any], items: list[str],
            results: dict[str, torch.Tensor], done: torch.Tensor, tag: str) -> None:
        stage = self._stage(tag)
        prefix = f"{self.log_prefix}/{stage}"
        metrics = {f"{prefix}/{k}": float(v) for k, v in zip(self._keys(),
                                                              results["summary"][0])}
        entry["metrics"] = metrics
        log_scalars(trainer, metrics)
        fig = ifv_figure(self.last_result, f"Grad-IFV {self.layer} k={self.k:g} epoch "
                                           f"{trainer.current_epoch}")
        _legacy_figure_file(trainer, fig, stage)
        log_figure(trainer, f"{prefix}/angles_ssim", fig)
        if self.log_images:
            images = results["images"][0].float()
            log_grid(trainer, f"{prefix}/realizations", images,
                     labels=[f"target {i}" for i in range(images.shape[0])],
                     tile_size=self.tile_size)

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Deprecated: ``run(trainer, pl_module, tag="test" | "epoch")``."""
        warnings.warn("InverseFeatureVisualizationCallback._run is deprecated; use "
                      "run(trainer, pl_module, tag='test' or 'epoch')", DeprecationWarning,
                      stacklevel=2)
        self.run(trainer, pl_module, "test" if stage == "test" else "epoch")


def _legacy_figure_file(trainer: L.Trainer, fig: Any, stage: str) -> None:
    """The figure file of earlier versions, ``<log_dir>/ifv/<stage>_angles_ssim_step<step>.png``
    (CSV-like loggers only; with ``logger=False`` nothing is written, where earlier versions
    wrote into ``default_root_dir``, usually the working directory); kept until readers move
    to the shared image log (``images/<prefix>__<stage>__angles_ssim_step<step>.png``)."""
    dirs = [getattr(lg, "log_dir", None) for lg in trainer.loggers
            if not hasattr(getattr(lg, "experiment", None), "add_image")]
    for d in dirs:
        if d:
            out = Path(d) / "ifv"
            out.mkdir(parents=True, exist_ok=True)
            fig.savefig(out / f"{stage}_angles_ssim_step{trainer.global_step}.png", dpi=100)


__all__ = ["COLORS", "InverseFeatureVisualizationCallback", "ifv_figure"]
