"""``InvariantSetCallback``: invariant-set samples of validation images during/after training."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_fv.analysis.invariance import invariant_metrics
from lightning_fv.callbacks._logging import (
    ImageBuffer,
    isolated,
    log_image,
    log_scalars,
    select_module,
)
from lightning_fv.callbacks._scheduled import ScheduledCallback
from lightning_fv.diffusion.invariant import (
    INVARIANT_PRESETS,
    OBJECTIVES,
    InvariantConfig,
    invariant_set_sample,
    make_objective,
    seeded_latents,
)
from lightning_fv.utils.distributed import gather_objects, shard
from lightning_fv.utils.images import image_grid


class InvariantSetCallback(ScheduledCallback):
    """Generate invariant-set samples (thesis App. .1, Alg. 1) of the first ``num_queries``
    validation images every ``every_n_epochs`` validation epochs and/or at the end of fit,
    and log one grid (a row per query: the query, then its samples) under
    ``<log_prefix>/samples`` plus scalars ``<log_prefix>/{fraction_reached, mean_steps, l1,
    l2, kl, pixel_distance, diversity, sweep_c<cutoff>}`` to every logger (rank zero).

    Query ``i`` (in validation order) and sample ``j`` use the starting latent of seed
    ``seed + i·samples_per_query + j`` (saved in checkpoints), so epochs differ only through
    the classifier. Under DDP the queries are sharded over ranks and gathered. Training is
    unaffected: the RNGs, modes, ``requires_grad`` flags and gradients are restored, no
    ``.grad`` is left, and it works under the Trainer's default ``inference_mode=True``.

    Args:
        pipeline: diffusion checkpoint for :func:`lightning_fv.diffusion.load_pipeline`
            (``"bundled"``: the digits LightningDiT) or a pipeline module; its images must be
            valid classifier inputs (they are resized to the query size).
        module: attribute path of the classifier in the LightningModule (``"model"`` for
            :class:`~lightning_fv.modules.classifier.ImageClassifier`; ``""`` = itself).
        objective: ``"logits"``, ``"probabilities"`` or ``"units"`` (with ``units``).
        units: unit names for ``objective="units"``.
        num_queries, samples_per_query: how many validation images and samples each.
        every_n_epochs: run after every n-th validation epoch (0 = never).
        at_fit_end: also run when fit ends (on the last validation epoch's images).
        algorithm: the settings of Algorithm 1 (:class:`InvariantConfig`; default the
            ``"training"`` preset: 32 SGD steps, 10 sampler steps, else App. .3 — a small
            budget keeps training fast). In YAML: ``algorithm: {budget: 16, …}``.
        conditional: condition the diffusion model on the query label.
        seed: base seed of the starting latents.
        cutoffs: cutoffs of the logged spectral sweep.
        log_prefix: tag prefix.
        settings: single :class:`InvariantConfig` fields overriding ``algorithm`` (Python
            callers: ``budget=2, lr=1.0``).
    """

    def __init__(self, pipeline: str | nn.Module = "bundled", module: str = "model",
                 objective: str = "logits", units: list[str] | None = None,
                 num_queries: int = 4, samples_per_query: int = 4, every_n_epochs: int = 0,
                 at_fit_end: bool = True,
                 algorithm: InvariantConfig = INVARIANT_PRESETS["training"],
                 conditional: bool = False, seed: int = 0,
                 cutoffs: list[float] | None = None, log_prefix: str = "invariant",
                 **settings: Any) -> None:
        super().__init__()
        if objective not in OBJECTIVES or objective == "sae":
            raise ValueError(f"objective must be one of 'logits', 'probabilities', 'units'; "
                             f"got {objective!r}")
        if num_queries < 1 or samples_per_query < 1 or every_n_epochs < 0:
            raise ValueError(f"need num_queries >= 1, samples_per_query >= 1, "
                             f"every_n_epochs >= 0; got {num_queries}, "
                             f"{samples_per_query}, {every_n_epochs}")
        self.pipeline_source = pipeline
        self.module, self.objective, self.units = module, objective, units
        self.num_queries, self.samples_per_query = num_queries, samples_per_query
        self.every_n_epochs, self.at_fit_end = every_n_epochs, at_fit_end
        self.algorithm = algorithm.replace(**settings) if settings else algorithm
        self.conditional, self.seed = conditional, seed
        self.cutoffs = tuple(cutoffs or (0.1, 0.3, 0.5, 0.7, 0.9))
        self.log_prefix = log_prefix
        self.history: list[dict[str, Any]] = []
        self.last_images: torch.Tensor | None = None
        self.buffer = ImageBuffer(num_queries)
        self._pipeline: nn.Module | None = None

    def _get_pipeline(self, device: torch.device) -> nn.Module:
        if self._pipeline is None:
            src = self.pipeline_source
            if isinstance(src, nn.Module):
                self._pipeline = src
            else:
                from lightning_fv.diffusion.pipeline import load_pipeline

                self._pipeline = load_pipeline(src)
        return self._pipeline.to(device)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        net = select_module(pl_module, self.module)
        if self.objective == "units":
            make_objective("units", net, self.units)  # validates the names early
            from lightning_fv.optvis.hooks import get_layer, parse_unit

            for u in self.units or []:
                get_layer(net, parse_unit(u).layer)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str = "manual"
            ) -> dict[str, Any] | None:
        """Sample this rank's share of the queries, gather, log on rank zero."""
        x, y = self.buffer.gathered(trainer)
        if x.numel() == 0:
            rank_zero_warn(f"{type(self).__name__}: no validation images collected; "
                           "run validation before (or during) fit to get invariant sets")
            return None
        x, y = x[: self.num_queries], y[: self.num_queries]
        net = select_module(pl_module, self.module)
        ids = shard(list(range(x.shape[0])), trainer)
        n = self.samples_per_query
        t0 = time.time()
        part: dict[str, Any] = {"ids": ids, "out": None, "error": None}
        if ids:
            try:
                with isolated(net):
                    pipe = self._get_pipeline(pl_module.device)
                    obj = make_objective(self.objective, net, self.units)
                    q = x[ids].to(pl_module.device)
                    z = seeded_latents(pipe, [self.seed + i * n + j for i in ids
                                              for j in range(n)], pl_module.device)
                    res = invariant_set_sample(
                        pipe, obj, q, num_samples=n, z_T=z,
                        labels=y[ids].to(pl_module.device) if self.conditional else None,
                        config=self.algorithm)
                    met = invariant_metrics(obj, res, q, n, self.cutoffs)
                part["out"] = {"query": q.cpu(), "samples": res.images.cpu(),
                               "reached": res.reached.cpu(), "steps": res.steps.cpu(),
                               **{k: v.cpu() for k, v in met.items()}}
            except Exception as err:  # noqa: BLE001 - sampling must never end training
                part["error"] = (f"{type(self).__name__}: sampling queries {ids} failed: "
                                 f"{type(err).__name__}: {err}")
        parts = gather_objects(trainer, part)
        entry: dict[str, Any] = {"epoch": int(trainer.current_epoch),
                                 "step": int(trainer.global_step), "tag": tag,
                                 "errors": [p["error"] for p in parts if p["error"]],
                                 "metrics": {}}
        for err in entry["errors"]:
            rank_zero_warn(err)
        ok = [p for p in parts if p["out"] is not None]
        if ok:
            ok.sort(key=lambda p: p["ids"][0])
            out = {k: torch.cat([p["out"][k] for p in ok], dim=1 if k == "sweep" else 0)
                   for k in ok[0]["out"]}
            metrics = {"fraction_reached": float(out["reached"].float().mean()),
                       "mean_steps": float(out["steps"].float().mean()),
                       "l1": float(out["l1"].mean()), "l2": float(out["l2"].mean()),
                       "pixel_distance": float(out["pixel_distance"].mean()),
                       "diversity": float(out["diversity"].float().nanmean())}
            if "kl" in out:
                metrics["kl"] = float(out["kl"].mean())
            for c, v in zip(self.cutoffs, out["sweep"].mean(1)):
                metrics[f"sweep_c{c:g}"] = float(v)
            entry["metrics"] = metrics
            samples = out["samples"].reshape(-1, n, *out["samples"].shape[1:])
            rows = torch.cat([out["query"][:, None].to(samples.dtype), samples], 1)
            self.last_images = rows
            if trainer.is_global_zero:
                log_image(trainer, f"{self.log_prefix}/samples",
                          image_grid(rows.flatten(0, 1), nrow=n + 1))
                log_scalars(trainer, {f"{self.log_prefix}/{k}": v for k, v in metrics.items()})
        self.history.append(entry)
        rank_zero_info(f"{type(self).__name__}: {x.shape[0]} invariant set(s) in "
                       f"{time.time() - t0:.1f} s")
        return entry
