"""``FeatureVisualizationCallback``: render chosen units during and/or after training."""

from __future__ import annotations

import logging
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_fv.callbacks._logging import (
    gather_objects,
    isolated,
    log_image,
    log_scalars,
    select_module,
    shard,
    unshard,
)
from lightning_fv.callbacks._scheduled import ScheduledCallback
from lightning_fv.optvis.hooks import parse_unit
from lightning_fv.optvis.render import render_units
from lightning_fv.utils.images import image_grid

log = logging.getLogger(__name__)


class FeatureVisualizationCallback(ScheduledCallback):
    """Render ``units`` every ``every_n_epochs`` validation epochs and/or at the end of
    fit, and log one image grid per layer (``<log_prefix>/<layer>``) plus the final
    objective value of every unit (``<log_prefix>/value/<unit>``).

    Rendering follows `dont-trust-your-eyes…` App. C.2 (Lucent defaults) through
    :func:`lightning_fv.optvis.render_units`; every unit uses the fixed ``seed`` (saved in
    checkpoints), so images of different epochs differ only through the weights. Under
    DDP each rank renders ``units[rank::world_size]``; results are gathered and rank
    zero logs. Training is unaffected (RNG, mode, ``requires_grad`` and gradients are
    restored) and it works under the Trainer's default ``inference_mode=True``.

    Args:
        units: unit names ``"layer:index"`` of the visualized module.
        module: attribute path of the network inside the LightningModule (``"model"`` for
            :class:`~lightning_fv.modules.classifier.ImageClassifier`; ``""`` = itself).
        every_n_epochs: render after every n-th validation epoch (0 = never).
        at_fit_end: also render when fit ends.
        image_size: rendered image size in pixels.
        steps: optimizer steps (the threshold).
        seed: seed of every unit's initial noise and transforms.
        chunk_size: units rendered per batch.
        transforms: ``"standard"`` or ``"none"``.
        progress: show a progress bar while rendering.
        log_prefix: tag prefix.
        detector: path of a visualization detector saved by
            :func:`lightning_fv.modules.detector.save_detector` (App. C.1, Table 3; loaded
            with safetensors / ``weights_only``). Rank zero then scores every rendered image
            and logs ``<log_prefix>/detector/p_natural/<unit>`` (the detector's probability
            that the image is natural) and ``<log_prefix>/detector/vis_fraction`` (the
            fraction it calls visualizations) — e.g. to see whether a fooling gate would
            fire on these renders.
    """

    def __init__(self, units: list[str], module: str = "", every_n_epochs: int = 1,
                 at_fit_end: bool = True, image_size: int = 64, steps: int = 128,
                 seed: int = 0, chunk_size: int = 64, transforms: str = "standard",
                 progress: bool = False, log_prefix: str = "fv",
                 detector: str | None = None) -> None:
        super().__init__()
        if not units:
            raise ValueError("FeatureVisualizationCallback needs at least one unit")
        if transforms not in ("standard", "none"):
            raise ValueError(f"transforms must be 'standard' or 'none', got {transforms!r}")
        if every_n_epochs < 0 or steps < 1 or image_size < 1:
            raise ValueError(f"need every_n_epochs >= 0, steps >= 1, image_size >= 1; got "
                             f"{every_n_epochs}, {steps}, {image_size}")
        self.units = [str(parse_unit(u)) for u in units]
        self.module = module
        self.every_n_epochs = every_n_epochs
        self.at_fit_end = at_fit_end
        self.image_size = image_size
        self.steps = steps
        self.seed = seed
        self.chunk_size = chunk_size
        self.transforms = transforms
        self.progress = progress
        self.log_prefix = log_prefix
        self.detector = detector
        self._detector_net: torch.nn.Module | None = None
        self.history: list[dict[str, Any]] = []
        self.last_images: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.check_units(pl_module, self.units, self.module)
        if self.detector is not None and self._detector_net is None:
            from lightning_fv.modules.detector import load_detector

            self._detector_net = load_detector(self.detector).eval()

    @torch.no_grad()
    def detector_scores(self, images: torch.Tensor) -> torch.Tensor:
        """``(N,)`` probability that each image ``(N, 3, H, W)`` is natural, from ``detector``."""
        if self._detector_net is None:
            raise RuntimeError("no detector: pass detector=<path> to FeatureVisualizationCallback")
        logits = self._detector_net.resized(images.float().cpu())
        return torch.sigmoid(logits.flatten())

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str = "manual"
            ) -> dict[str, Any]:
        """Render this rank's share, gather, log on rank zero; returns the history entry."""
        net = select_module(pl_module, self.module)
        mine = shard(self.units, trainer)
        t0 = time.time()
        part: dict[str, Any] = {"units": mine, "images": None, "values": None, "error": None}
        if mine:
            try:
                with isolated(net):
                    res = render_units(net, mine, chunk_size=self.chunk_size, seed=self.seed,
                                       thresholds=(self.steps,), image_size=self.image_size,
                                       transforms="standard" if self.transforms == "standard"
                                       else None, progress=self.progress)
                part["images"], part["values"] = res.final, res.values[self.steps]
            except Exception as err:  # noqa: BLE001 - a failed render must not end training
                part["error"] = (f"{type(self).__name__}: rendering unit(s) {mine} failed: "
                                 f"{type(err).__name__}: {err}")
        parts = gather_objects(trainer, part)
        entry: dict[str, Any] = {"epoch": int(trainer.current_epoch), "step":
                                 int(trainer.global_step), "tag": tag, "values": {},
                                 "errors": [p["error"] for p in parts if p["error"]],
                                 "shards": [list(p["units"]) for p in parts]}
        for err in entry["errors"]:
            rank_zero_warn(err)
        ok = [p for p in parts if p["error"] is None and p["images"] is not None]
        if ok and not entry["errors"]:
            units = unshard([p["units"] for p in parts])
            images = torch.stack(unshard([list(p["images"]) for p in parts]))
            values = torch.stack(unshard([list(p["values"]) for p in parts]))
        else:
            units = [u for p in ok for u in p["units"]]
            images = torch.cat([p["images"] for p in ok]) if ok else None
            values = torch.cat([p["values"] for p in ok]) if ok else None
        if images is not None:
            self.last_images = images
            entry["values"] = {u: float(v) for u, v in zip(units, values)}
            if trainer.is_global_zero:
                by_layer: dict[str, list[int]] = {}
                for i, u in enumerate(units):
                    by_layer.setdefault(parse_unit(u).layer, []).append(i)
                for layer, idx in by_layer.items():
                    log_image(trainer, f"{self.log_prefix}/{layer}", image_grid(images[idx]))
                log_scalars(trainer, {f"{self.log_prefix}/value/{u}": v
                                      for u, v in entry["values"].items()})
                if self._detector_net is not None:
                    p = self.detector_scores(images)
                    entry["detector_p_natural"] = {u: float(v) for u, v in zip(units, p)}
                    scalars = {f"{self.log_prefix}/detector/p_natural/{u}": float(v)
                               for u, v in zip(units, p)}
                    scalars[f"{self.log_prefix}/detector/vis_fraction"] = float(
                        (p < 0.5).float().mean())
                    log_scalars(trainer, scalars)
        self.history.append(entry)
        rank_zero_info(f"{type(self).__name__}: rendered {len(units)} unit(s) in "
                       f"{time.time() - t0:.1f} s")
        return entry

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "units": list(self.units), "history": list(self.history)}
