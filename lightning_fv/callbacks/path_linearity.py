"""``PathLinearityCallback``: AGA / ALD of chosen units during training."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_fv.analysis.path_linearity import path_linearity, top_activating
from lightning_fv.callbacks._logging import (
    ImageBuffer,
    gather_objects,
    isolated,
    log_figure,
    log_scalars,
    select_module,
    shard,
)
from lightning_fv.callbacks._scheduled import ScheduledCallback
from lightning_fv.optvis.hooks import parse_unit


class PathLinearityCallback(ScheduledCallback):
    """Path linearity (`dont-trust-your-eyes…` §5, App. C.4, Eq. 12–18) of ``units``.

    For each unit the ``num_images`` most activating validation images (of the first
    ``max_images`` per rank, gathered) start a feature-visualization run of ``steps``
    steps; the angles between successive normalized gradients give ``AGPA_j`` and
    ``AGA``, the distance to the start–end segment ``ALDP_j`` and ``ALD``.

    Logged: ``<prefix>/aga/<unit>``, ``<prefix>/ald/<unit>``, their means over units
    ``<prefix>/mean_aga``, ``<prefix>/mean_ald`` (one name must not prefix another: MLflow
    stores metrics as files), and the AGPA_j figure ``<prefix>/agpa``. Under
    DDP the units are split across ranks (``units[rank::world]``) and gathered.

    Args:
        units: unit names ``"layer:index"``.
        module: attribute path of the network inside the LightningModule.
        num_images: ``M``, start images per unit (paper: 20).
        steps: ``N`` optimizer steps (paper: 512).
        every_n_epochs: run after every n-th validation epoch (0 = only at fit end).
        at_fit_end: also run at the end of fit.
        max_images: validation images kept per rank to choose start images from.
        seed: transform seed.
        transforms: ``"standard"`` or ``"none"``.
        log_prefix: tag prefix.
    """

    def __init__(self, units: list[str], module: str = "", num_images: int = 4,
                 steps: int = 32, every_n_epochs: int = 1, at_fit_end: bool = False,
                 max_images: int = 500, seed: int = 0, transforms: str = "standard",
                 log_prefix: str = "linearity") -> None:
        super().__init__()
        if not units:
            raise ValueError("PathLinearityCallback needs at least one unit")
        if steps < 2 or num_images < 1:
            raise ValueError(f"need steps >= 2 and num_images >= 1, got {steps}, {num_images}")
        if transforms not in ("standard", "none"):
            raise ValueError(f"transforms must be 'standard' or 'none', got {transforms!r}")
        self.units = [str(parse_unit(u)) for u in units]
        self.module = module
        self.num_images = num_images
        self.steps = steps
        self.every_n_epochs = every_n_epochs
        self.at_fit_end = at_fit_end
        self.seed = seed
        self.transforms = transforms
        self.log_prefix = log_prefix
        self.buffer = ImageBuffer(max_images)
        self.history: list[dict[str, Any]] = []
        self.last_agpa: dict[str, torch.Tensor] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.check_units(pl_module, self.units, self.module)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str = "epoch"
            ) -> dict[str, Any]:
        """Measure this rank's units, gather, log on rank zero; returns the history entry."""
        t0 = time.time()
        net = select_module(pl_module, self.module)
        natural, _ = self.buffer.gathered(trainer)
        results: dict[str, dict[str, Any]] = {}
        errors: list[str] = []
        for u in shard(self.units, trainer):
            try:
                with isolated(net):
                    start, _, _ = top_activating(net, u, natural, m=self.num_images)
                    r = path_linearity(net, u, start, steps=self.steps, seed=self.seed,
                                       transforms="standard" if self.transforms == "standard"
                                       else None)
                results[u] = {"aga": r.aga, "ald": r.ald, "agpa": r.agpa.tolist(),
                              "aldp": r.aldp.tolist()}
            except Exception as err:  # noqa: BLE001 - a failing unit must not end training
                errors.append(f"{type(self).__name__}: unit {u!r} failed: "
                              f"{type(err).__name__}: {err}")
        parts = gather_objects(trainer, {"results": results, "errors": errors})
        merged = {u: r for p in parts for u, r in p["results"].items()}
        all_errors = [e for p in parts for e in p["errors"]]
        for e in all_errors:
            rank_zero_warn(e)
        ordered = {u: merged[u] for u in self.units if u in merged}
        entry: dict[str, Any] = {
            "epoch": int(trainer.current_epoch), "step": int(trainer.global_step), "tag": tag,
            "aga": {u: r["aga"] for u, r in ordered.items()},
            "ald": {u: r["ald"] for u, r in ordered.items()}, "errors": all_errors,
            "shards": [sorted(p["results"]) for p in parts]}
        if ordered:
            entry["mean_aga"] = sum(entry["aga"].values()) / len(ordered)
            entry["mean_ald"] = sum(entry["ald"].values()) / len(ordered)
            self.last_agpa = {u: torch.tensor(r["agpa"]) for u, r in ordered.items()}
        self.history.append(entry)
        if trainer.is_global_zero and ordered:
            scalars = {f"{self.log_prefix}/aga/{u}": v for u, v in entry["aga"].items()}
            scalars.update({f"{self.log_prefix}/ald/{u}": v for u, v in entry["ald"].items()})
            scalars[f"{self.log_prefix}/mean_aga"] = entry["mean_aga"]
            scalars[f"{self.log_prefix}/mean_ald"] = entry["mean_ald"]
            log_scalars(trainer, scalars)
            from lightning_fv.analysis.figures import agpa_figure

            log_figure(trainer, f"{self.log_prefix}/agpa", agpa_figure(
                self.last_agpa, title=f"AGPA_j, epoch {trainer.current_epoch}"))
        rank_zero_info(f"{type(self).__name__}: {len(ordered)} unit(s) in "
                       f"{time.time() - t0:.1f} s")
        return entry
