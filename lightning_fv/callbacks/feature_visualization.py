"""``FeatureVisualizationCallback``: render chosen units during and/or after training."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F

from lightning_fv.callbacks._logging import ImageBuffer, log_grid, log_scalars
from lightning_fv.callbacks._scheduled import ScheduledCallback
from lightning_fv.modules.feature_visualizer import METHODS, photo_spectrum
from lightning_fv.optvis.accentuation import DEFAULT_WEIGHT, accentuate
from lightning_fv.optvis.hooks import parse_unit, parse_units
from lightning_fv.optvis.maco import DEFAULT_MACO_PRESET, maco_config, render_maco
from lightning_fv.optvis.render import render_units
from lightning_fv.optvis.transform import model_input_size

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

    The logged grids are readable: every tile is enlarged to at least ``tile_size`` pixels
    and captioned with its unit and final objective value. Images of the fit-end run go
    to ``<log_prefix>/<layer>_fit_end`` so they never replace the last epoch's image.

    Args:
        units: units of the visualized module in the package's unit grammar:
            ``"layer:index"``, ranges ``"fc:0-3"``, every channel ``"fc:*"`` (expanded
            at ``setup``), positions ``"block3:5@2,2"``.
        module: attribute path of the network inside the LightningModule (``"model"`` for
            :class:`~lightning_fv.modules.classifier.ImageClassifier`; ``""`` = itself).
        every_n_epochs: render after every n-th validation epoch (0 = never).
        at_fit_end: also render when fit ends.
        image_size: rendered image size in pixels.
        steps: optimizer steps (the threshold).
        seed: seed of every unit's initial noise and transforms.
        batch_size: units rendered together (one image each); ``chunk_size`` is its
            deprecated name.
        transforms: ``"standard"`` or ``"none"``.
        progress: show a progress bar while rendering.
        log_prefix: tag prefix.
        tile_size: each logged tile is enlarged to at least this many pixels and captioned
            (unit, objective value); ``None`` logs the raw pixels without captions.
        on_error: ``"warn"`` (report a failed render every time through the package
            logger, a warning and the experiment loggers; training goes on) or ``"raise"``.
        detector: path of a visualization detector saved by
            :func:`lightning_fv.modules.detector.save_detector` (App. C.1, Table 3; loaded
            with safetensors / ``weights_only``). Rank zero then scores every rendered image
            and logs ``<log_prefix>/detector/p_natural/<unit>`` (the detector's probability
            that the image is natural) and ``<log_prefix>/detector/vis_fraction`` (the
            fraction it calls visualizations) — e.g. to see whether a fooling gate would
            fire on these renders.
        method: ``"standard"`` (:func:`~lightning_fv.optvis.render_units`), ``"maco"``
            (:func:`~lightning_fv.optvis.maco.render_maco`: a ``canvas_size`` image seen
            through ``image_size`` crops (the size the model enforces, for a ViT with a
            fixed input size), the embedded photos' spectrum; the logged tiles
            are the canvas) or ``"accentuation"``
            (:func:`~lightning_fv.optvis.accentuation.accentuate`: unit ``i`` accentuated in
            the ``i mod n``-th of the ``n`` validation images the callback keeps, up to
            ``max_seed_images``, from the first validation dataloader of the epoch; the
            fit-end run is skipped while none were seen).
        maco_preset: MACO settings (``"lightning"`` or ``"horama"``).
        canvas_size: MACO canvas side (default ``image_size · 1280 / 224``).
        accent_layer: accentuation's regularized layer (``None``: no regularizer).
        accent_weight: accentuation's ``λ``.
        max_seed_images: validation images kept for accentuation (per rank).
    """

    def __init__(self, units: list[str], module: str = "", every_n_epochs: int = 1,
                 at_fit_end: bool = True, image_size: int = 64, steps: int = 128,
                 seed: int = 0, batch_size: int = 64, transforms: str = "standard",
                 progress: bool = False, log_prefix: str = "fv",
                 detector: str | None = None, tile_size: int | None = 128,
                 on_error: str = "warn", method: str = "standard",
                 maco_preset: str = DEFAULT_MACO_PRESET, canvas_size: int | None = None,
                 accent_layer: str | None = None, accent_weight: float = DEFAULT_WEIGHT,
                 max_seed_images: int = 64, chunk_size: int | None = None) -> None:
        super().__init__()
        if chunk_size is not None:  # the name in configs released before 2026-11-30
            warnings.warn("FeatureVisualizationCallback(chunk_size=...) is deprecated; use "
                          "batch_size=", DeprecationWarning, stacklevel=2)
            batch_size = chunk_size
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        maco = maco_config(maco_preset)
        if canvas_size is not None and canvas_size < 2:
            raise ValueError(f"canvas_size must be >= 2 pixels, got {canvas_size}")
        if max_seed_images < 1:
            raise ValueError(f"max_seed_images must be >= 1, got {max_seed_images}")
        if not units:
            raise ValueError("FeatureVisualizationCallback needs at least one unit, e.g. "
                             "['fc:0'], ['fc:0-3'] or ['fc:*']")
        if transforms not in ("standard", "none"):
            raise ValueError(f"transforms must be 'standard' or 'none', got {transforms!r}")
        if every_n_epochs < 0 or steps < 1 or image_size < 1:
            raise ValueError(f"need every_n_epochs >= 0, steps >= 1, image_size >= 1; got "
                             f"{every_n_epochs}, {steps}, {image_size}")
        if tile_size is not None and tile_size < 1:
            raise ValueError(f"tile_size must be >= 1 pixel or None, got {tile_size}")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        self.unit_spec = [units] if isinstance(units, str) else list(units)
        # ranges are expanded now; a wildcard needs the network and waits for setup
        self.units: list[str] | None = None if any("*" in str(u) for u in self.unit_spec) \
            else [str(u) for u in parse_units(self.unit_spec)]
        self.tile_size = tile_size
        self.on_error = on_error
        self.module = module
        self.every_n_epochs = every_n_epochs
        self.at_fit_end = at_fit_end
        self.image_size = image_size
        self.steps = steps
        self.seed = seed
        self.batch_size = batch_size
        self.transforms = transforms
        self.progress = progress
        self.log_prefix = log_prefix
        self.detector = detector
        self._detector_net: torch.nn.Module | None = None
        self.method = method
        self.maco_preset = maco_preset
        self.canvas_size = canvas_size or round(maco.canvas_ratio * image_size)
        self.accent_layer = accent_layer
        self.accent_weight = accent_weight
        self.max_seed_images = max_seed_images
        if method == "accentuation":
            self.buffer = ImageBuffer(max_seed_images)
        self._seeds: torch.Tensor | None = None
        self.history: list[dict[str, Any]] = []
        self.last_images: torch.Tensor | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.units = self.resolve_units(pl_module, self.unit_spec, self.image_size)
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

    def items(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
        if self.units is None:
            self.units = self.resolve_units(pl_module, self.unit_spec, self.image_size)
        return list(self.units)

    def shapes(self, items: list[str], trainer: L.Trainer, pl_module: L.LightningModule
               ) -> dict[str, tuple[int, ...]]:
        side = self.canvas_size if self.method == "maco" else self.image_size
        return {"image": (3, side, side), "value": ()}

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str = "manual"
            ) -> dict[str, Any]:
        """For accentuation, gather every rank's validation images first (a collective),
        then the template's run."""
        if self.buffer is not None:
            x, _ = self.buffer.gathered(trainer)
            self._seeds = x if x.numel() else None
        return super().run(trainer, pl_module, tag)

    def describe(self, items: list[str]) -> str:
        return f"rendering unit(s) {items}"

    def compute(self, net: torch.nn.Module, items: list[str], trainer: L.Trainer,
                pl_module: L.LightningModule) -> dict[str, torch.Tensor]:
        """Render ``items`` with the fixed ``seed``: ``{"image": (K, 3, S, S), "value": (K,)}``."""
        transforms = "standard" if self.transforms == "standard" else None
        if self.method == "maco":
            res = render_maco(net, items, config=self.maco_preset, steps=self.steps,
                              spectrum=photo_spectrum(self.canvas_size),
                              image_size=self.canvas_size,
                              input_size=None if model_input_size(net) else self.image_size,
                              seed=self.seed, batch_size=self.batch_size,
                              progress=self.progress)
            return {"image": res.images_01(), "value": res.values}
        if self.method == "accentuation":
            if self._seeds is None:
                raise RuntimeError("accentuation needs validation images and none were seen "
                                   "this epoch (is there a validation dataloader?)")
            seeds = self._seed_images_for(items)
            out = accentuate(net, items, seeds, layer=self.accent_layer,
                             weight=self.accent_weight, steps=self.steps,
                             transforms=transforms, seed=self.seed, progress=self.progress)
            return {"image": out.images, "value": out.values}
        res = render_units(net, items, batch_size=self.batch_size, seed=self.seed,
                           thresholds=(self.steps,), image_size=self.image_size,
                           transforms=transforms, progress=self.progress)
        return {"image": res.final, "value": res.values[self.steps]}

    def _seed_images_for(self, items: list[str]) -> torch.Tensor:
        """Seed image of each item: unit ``i`` of ``self.units`` takes the ``i mod n``-th
        gathered validation image, resized to ``image_size`` (bilinear, antialiased)."""
        assert self._seeds is not None
        order = list(self.units or items)
        idx = torch.tensor([order.index(u) % len(self._seeds) for u in items])
        seeds = self._seeds[idx].float()
        if tuple(seeds.shape[-2:]) != (self.image_size, self.image_size):
            seeds = F.interpolate(seeds, size=(self.image_size, self.image_size),
                                  mode="bilinear", antialias=True, align_corners=False)
        return seeds.clamp(0, 1)

    def summarize(self, items: list[str], results: dict[str, torch.Tensor],
                  done: torch.Tensor) -> dict[str, Any]:
        units = [u for u, ok in zip(items, done.tolist()) if ok]
        if not units:
            return {"values": {}}
        self.last_images = results["image"][done].float()
        return {"values": {u: float(v) for u, v in zip(units, results["value"][done])}}

    def log_results(self, trainer: L.Trainer, entry: dict[str, Any], items: list[str],
            results: dict[str, torch.Tensor], done: torch.Tensor, tag: str) -> None:
        """One captioned grid per layer (unit and objective value under every tile), the
        objective values and, with a detector, its scores (rank zero)."""
        units = list(entry["values"])
        images = self.last_images
        assert images is not None
        by_layer: dict[str, list[int]] = {}
        for i, u in enumerate(units):
            by_layer.setdefault(parse_unit(u).layer, []).append(i)
        for layer, idx in by_layer.items():
            log_grid(trainer, self.image_tag(layer, tag), images[idx],
                     labels=[units[i] for i in idx],
                     values=[entry["values"][units[i]] for i in idx], tile_size=self.tile_size)
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

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "units": list(self.units or []),
                "history": list(self.history)}
