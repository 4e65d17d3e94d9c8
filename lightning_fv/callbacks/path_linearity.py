"""``PathLinearityCallback``: AGA / ALD of chosen units during training."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch

from lightning_fv.analysis.path_linearity import path_linearity, top_activating
from lightning_fv.callbacks._logging import ImageBuffer, log_figure, log_scalars
from lightning_fv.callbacks._scheduled import ScheduledCallback
from lightning_fv.optvis.hooks import parse_units


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
        units: units in the package's unit grammar (``"fc:1"``, ``"fc:0-3"``, ``"fc:*"``).
        module: attribute path of the network inside the LightningModule.
        num_images: ``M``, start images per unit (paper: 20).
        steps: ``N`` optimizer steps (paper: 512).
        every_n_epochs: run after every n-th validation epoch (0 = never; with
            ``at_fit_end=True``, only at the end of fit).
        at_fit_end: also run at the end of fit.
        max_images: validation images kept per rank to choose start images from.
        seed: transform seed.
        transforms: ``"standard"`` or ``"none"``.
        log_prefix: tag prefix.
        on_error: ``"warn"`` (report a failing unit every time; training goes on) or
            ``"raise"``.
    """

    def __init__(self, units: list[str], module: str = "", num_images: int = 4,
                 steps: int = 32, every_n_epochs: int = 1, at_fit_end: bool = False,
                 max_images: int = 500, seed: int = 0, transforms: str = "standard",
                 log_prefix: str = "linearity", on_error: str = "warn") -> None:
        super().__init__()
        if not units:
            raise ValueError("PathLinearityCallback needs at least one unit, e.g. "
                             "['fc:0'], ['fc:0-3'] or ['fc:*']")
        if on_error not in ("warn", "raise"):
            raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
        if steps < 2 or num_images < 1:
            raise ValueError(f"need steps >= 2 and num_images >= 1, got {steps}, {num_images}")
        if transforms not in ("standard", "none"):
            raise ValueError(f"transforms must be 'standard' or 'none', got {transforms!r}")
        self.unit_spec = [units] if isinstance(units, str) else list(units)
        # ranges are expanded now; a wildcard needs the network and waits for setup
        self.units: list[str] | None = None if any("*" in str(u) for u in self.unit_spec) \
            else [str(u) for u in parse_units(self.unit_spec)]
        self.on_error = on_error
        self._natural = torch.empty(0)
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
        super().setup(trainer, pl_module, stage)
        self.units = self.resolve_units(pl_module, self.unit_spec)

    def items(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[str]:
        if self.units is None:
            self.units = self.resolve_units(pl_module, self.unit_spec)
        self._natural, _ = self.buffer.gathered(trainer)
        return list(self.units)

    def shapes(self, items: list[str], trainer: L.Trainer, pl_module: L.LightningModule
               ) -> dict[str, tuple[int, ...]]:
        return {"agpa": (self.steps - 1,), "aldp": (self.steps - 1,), "aga": (), "ald": ()}

    def compute(self, net: torch.nn.Module, items: list[str], trainer: L.Trainer,
                pl_module: L.LightningModule) -> dict[str, Any]:
        """AGPA_j / ALDP_j ``(K, N−1)`` and AGA / ALD ``(K,)`` (degrees / relative
        distance) of ``items``; a failing unit is reported, the others go on."""
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in ("agpa", "aldp", "aga", "ald")}
        ok, errors = [], []
        nan = torch.full((self.steps - 1,), float("nan"), dtype=torch.float64)
        for u in items:
            try:
                start, _, _ = top_activating(net, u, self._natural, m=self.num_images)
                r = path_linearity(net, u, start, steps=self.steps, seed=self.seed,
                                   transforms="standard" if self.transforms == "standard"
                                   else None)
                vals = {"agpa": r.agpa.double(), "aldp": r.aldp.double(),
                        "aga": torch.tensor(r.aga, dtype=torch.float64),
                        "ald": torch.tensor(r.ald, dtype=torch.float64)}
                ok.append(True)
            except Exception as err:  # noqa: BLE001 - a failing unit must not end training
                errors.append(f"{type(self).__name__}: unit {u!r} failed: "
                              f"{type(err).__name__}: {err}")
                vals = {"agpa": nan, "aldp": nan, "aga": nan[0], "ald": nan[0]}
                ok.append(False)
            for k, v in vals.items():
                rows[k].append(v)
        return {**{k: torch.stack(v) for k, v in rows.items()},
                "ok": torch.tensor(ok), "errors": errors}

    def summarize(self, items: list[str], results: dict[str, torch.Tensor],
                  done: torch.Tensor) -> dict[str, Any]:
        units = [u for u, good in zip(items, done.tolist()) if good]
        entry: dict[str, Any] = {
            "aga": {u: float(results["aga"][items.index(u)]) for u in units},
            "ald": {u: float(results["ald"][items.index(u)]) for u in units}}
        if units:
            entry["mean_aga"] = sum(entry["aga"].values()) / len(units)
            entry["mean_ald"] = sum(entry["ald"].values()) / len(units)
            self.last_agpa = {u: results["agpa"][items.index(u)].float() for u in units}
        return entry

    def log_results(self, trainer: L.Trainer, entry: dict[str, Any], items: list[str],
            results: dict[str, torch.Tensor], done: torch.Tensor, tag: str) -> None:
        """AGA / ALD per unit, their means and the AGPA_j figure (rank zero)."""
        scalars = {f"{self.log_prefix}/aga/{u}": v for u, v in entry["aga"].items()}
        scalars.update({f"{self.log_prefix}/ald/{u}": v for u, v in entry["ald"].items()})
        scalars[f"{self.log_prefix}/mean_aga"] = entry["mean_aga"]
        scalars[f"{self.log_prefix}/mean_ald"] = entry["mean_ald"]
        log_scalars(trainer, scalars)
        from lightning_fv.analysis.figures import agpa_figure

        log_figure(trainer, self.image_tag("agpa", tag), agpa_figure(
            self.last_agpa, title=f"AGPA_j, epoch {trainer.current_epoch}"))
