"""``SanityCheckCallback``: the similarity sanity check on validation data during training."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from lightning_fv.analysis.similarity import (
    SanityCheckResult,
    sanity_check_groups,
    summarize_groups,
)
from lightning_fv.callbacks._logging import (
    ImageBuffer,
    isolated,
    log_figure,
    log_scalars,
    select_module,
)
from lightning_fv.callbacks._scheduled import ScheduledCallback
from lightning_fv.optvis.hooks import get_layer, parse_unit
from lightning_fv.optvis.render import render_units
from lightning_fv.utils.distributed import gather_objects, shard


class SanityCheckCallback(ScheduledCallback):
    """Run the similarity sanity check (`dont-trust-your-eyes…` §3, App. C.3) after every
    ``every_n_epochs`` validation epochs.

    Natural images are the first ``max_images`` validation images (per rank, gathered);
    misclassified ones are excluded. Class unit ``c`` (``class_units[c]``, default
    ``"<class_layer>:c"``) is visualized ``visualizations_per_class`` times (seeds
    ``seed … seed + k − 1``, at the natural images' resolution); then for each of
    ``layers`` the natural-vs-natural (same / other class) and natural-vs-visualization
    similarities are computed, normalized between the bounds and smoothed as in C.3.

    Logged: the figure (``<prefix>/figure``, raw and normalized curves), per layer
    ``<prefix>/normalized/<layer>`` and raw ``<prefix>/raw_{upper,lower,fv}/<layer>``,
    and the summary ``<prefix>/score`` = mean normalized similarity over the included
    layers (< 0.5: the visualizations are processed more like other-class images than
    like their own class — they fail the check).

    Under DDP, visualizations are rendered ``classes[rank::world]`` per rank and the
    layers are split the same way; everything is gathered and rank zero logs.

    Args:
        layers: layers of the visualized module to compare.
        num_classes: number of class units (``None``: ``pl_module.hparams.num_classes``).
        class_layer: layer whose unit ``c`` is class ``c`` (e.g. ``"fc"``).
        class_units: explicit unit per class (overrides ``class_layer``/``num_classes``).
        module: attribute path of the network in the LightningModule (``""`` = itself).
        metric: ``"spearman"``, ``"pearson"`` or ``"cosine"``.
        strides: every n-th (same class, other class, natural-vs-FV) pair (C.3).
        visualizations_per_class: feature visualizations per class unit.
        steps: rendering steps.
        every_n_epochs: run after every n-th validation epoch (0 = never; with
            ``at_fit_end=True``, only at the end of fit).
        at_fit_end: also run at the end of fit.
        max_images: natural validation images kept per rank.
        min_gap: layers with ``upper − lower < min_gap`` are excluded (C.3: 0.01).
        seed: first rendering seed.
        progress: progress bar while rendering.
        log_prefix: tag prefix.
        on_error: ``"warn"`` (report failures every time; training goes on) or ``"raise"``.
    """

    def __init__(self, layers: list[str], num_classes: int | None = None,
                 class_layer: str = "fc", class_units: list[str] | None = None,
                 module: str = "", metric: str = "spearman",
                 strides: tuple[int, int, int] = (10, 100, 5),
                 visualizations_per_class: int = 1, steps: int = 128, every_n_epochs: int = 1,
                 at_fit_end: bool = False, max_images: int = 500, min_gap: float = 0.01,
                 seed: int = 0, progress: bool = False, log_prefix: str = "sanity",
                 on_error: str = "warn") -> None:
        super().__init__()
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        self.on_error = on_error
        if not layers:
            raise ValueError("SanityCheckCallback needs at least one layer")
        if metric not in ("spearman", "pearson", "cosine"):
            raise ValueError(f"unknown metric {metric!r}; valid: spearman, pearson, cosine")
        if len(strides) != 3 or min(strides) < 1:
            raise ValueError(f"strides must be 3 positive integers, got {list(strides)}")
        if visualizations_per_class < 1 or steps < 1 or max_images < 2:
            raise ValueError("need visualizations_per_class >= 1, steps >= 1, max_images >= 2")
        self.layers = list(layers)
        self.num_classes = num_classes
        self.class_layer = class_layer
        self.class_units = [str(parse_unit(u)) for u in class_units] if class_units else None
        self.module = module
        self.metric = metric
        self.strides = tuple(int(s) for s in strides)
        self.visualizations_per_class = visualizations_per_class
        self.steps = steps
        self.every_n_epochs = every_n_epochs
        self.at_fit_end = at_fit_end
        self.min_gap = min_gap
        self.seed = seed
        self.progress = progress
        self.log_prefix = log_prefix
        self.buffer = ImageBuffer(max_images)
        self.history: list[dict[str, Any]] = []
        self.last_result: SanityCheckResult | None = None

    def _units(self, pl_module: L.LightningModule) -> list[str]:
        if self.class_units:
            return self.class_units
        hparams = getattr(pl_module, "hparams", None) or {}
        n = self.num_classes or hparams.get("num_classes")
        if not n:
            raise ValueError(f"{type(self).__name__}: pass num_classes or class_units (the "
                             "LightningModule has no hparams.num_classes)")
        return [f"{self.class_layer}:{c}" for c in range(int(n))]

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        net = select_module(pl_module, self.module)
        for name in [*self.layers, *(parse_unit(u).layer for u in self._units(pl_module))]:
            try:
                get_layer(net, name)
            except KeyError as err:
                raise KeyError(f"{type(self).__name__}: {err.args[0]}") from None

    def _report_errors(self, trainer: L.Trainer, parts: list[dict[str, Any]]) -> bool:
        """Warn about the errors gathered from all ranks and record them in ``history``;
        ``True`` if there were any."""
        errors = [p["error"] for p in parts if p["error"]]
        self.report(trainer, errors)
        if errors:
            self.history.append({"epoch": int(trainer.current_epoch), "errors": errors})
        return bool(errors)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str = "epoch"
            ) -> SanityCheckResult | None:
        """Render, compare, gather and log (all ranks must call it)."""
        t0 = time.time()
        net = select_module(pl_module, self.module)
        natural, labels = self.buffer.gathered(trainer)
        units = self._units(pl_module)
        jobs = [(c, k) for c in range(len(units)) for k in range(self.visualizations_per_class)]
        index = shard(list(range(len(jobs))), trainer)
        mine = [jobs[i] for i in index]
        error = None
        vis_part = None
        if natural.shape[0] < 2:
            error = f"{type(self).__name__}: fewer than 2 validation images were collected"
        elif mine:
            try:
                with isolated(net):
                    res = render_units(net, [units[c] for c, _ in mine],
                                       seed=[self.seed + k for _, k in mine],
                                       thresholds=(self.steps,),
                                       image_size=tuple(natural.shape[-2:]),
                                       progress=self.progress)
                vis_part = list(res.final)
            except Exception as err:  # noqa: BLE001 - never end the run
                error = (f"{type(self).__name__}: rendering unit(s) "
                         f"{[units[c] for c, _ in mine]} failed: {type(err).__name__}: {err}")
        size = (3, *natural.shape[-2:]) if natural.dim() == 4 else (3, 0, 0)
        stacked, done = self.gather(trainer, net, len(jobs), {"vis": size},
                                    index if vis_part is not None else [],
                                    None if vis_part is None else {"vis": torch.stack(vis_part)})
        parts = gather_objects(trainer, {"jobs": mine, "error": error})
        if self._report_errors(trainer, parts):
            return None
        shards = [[units[c] for c, _ in p["jobs"]] for p in parts]
        vis = stacked["vis"][done].float()
        vis_labels = torch.tensor([c for (c, _), ok in zip(jobs, done.tolist()) if ok])
        # similarity per layer: this rank's share of the layers
        my_layers = shard(self.layers, trainer)
        groups, error, keep = {}, None, torch.zeros(0, dtype=torch.bool)
        try:
            with isolated(net), torch.no_grad():
                groups, keep = sanity_check_groups(net, my_layers, natural, labels, vis,
                                                   vis_labels, self.metric, self.strides)
        except Exception as err:  # noqa: BLE001
            error = f"{type(self).__name__}: similarity failed: {type(err).__name__}: {err}"
        parts = gather_objects(trainer, {"groups": groups, "error": error,
                                         "kept": int(keep.sum()) if error is None else 0})
        if self._report_errors(trainer, parts):
            return None
        merged = {k: v for p in parts for k, v in p["groups"].items()}
        result = summarize_groups(self.layers, [merged[name] for name in self.layers],
                                  self.metric, self.min_gap)
        result.n_natural = parts[0]["kept"]
        result.n_excluded = int(natural.shape[0]) - result.n_natural
        result.n_visualizations = int(vis.shape[0])
        self.last_result = result
        entry = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step),
                 "tag": tag, "score": float(result.score),
                 "normalized": {n: float(v) for n, v in zip(self.layers, result.normalized)},
                 "n_natural": result.n_natural, "n_excluded": result.n_excluded,
                 "shards": shards}
        self.history.append(entry)
        if trainer.is_global_zero:
            scalars = result.summary(self.log_prefix)
            scalars[f"{self.log_prefix}/excluded_natural"] = float(result.n_excluded)
            log_scalars(trainer, scalars)
            from lightning_fv.analysis.figures import sanity_check_figure

            log_figure(trainer, self.image_tag("figure", tag), sanity_check_figure(
                result, title=f"sanity check ({self.metric}), epoch {trainer.current_epoch}"))
        score = "nan" if math.isnan(result.score) else f"{result.score:.3f}"
        rank_zero_info(f"{type(self).__name__}: score {score} over {len(self.layers)} layers, "
                       f"{result.n_natural} natural images, {vis.shape[0]} visualizations "
                       f"({time.time() - t0:.1f} s)")
        return result
