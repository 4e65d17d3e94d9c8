"""The schedule, state and unit checks shared by the analysis callbacks."""

from __future__ import annotations

from typing import Any

import lightning as L

from lightning_fv.callbacks._logging import ImageBuffer, select_module
from lightning_fv.optvis.hooks import get_layer, parse_unit


class ScheduledCallback(L.Callback):
    """Calls ``self.run(trainer, pl_module, tag)`` after every ``every_n_epochs``-th
    validation epoch (``tag="epoch"``; 0 = never) and, if ``at_fit_end``, when fit ends
    (``tag="fit_end"``). Sanity-check epochs never count.

    A subclass that needs natural images sets ``self.buffer`` to an :class:`ImageBuffer`:
    it is refilled from the first validation dataloader every epoch, and the fit-end run
    is skipped while it is empty.
    """

    every_n_epochs: int = 1
    at_fit_end: bool = False
    buffer: ImageBuffer | None = None
    log_prefix: str = ""
    seed: int = 0
    history: list[dict[str, Any]]

    @property
    def state_key(self) -> str:
        return self._generate_state_key(log_prefix=self.log_prefix)

    def state_dict(self) -> dict[str, Any]:
        """The seed and the metric history survive a checkpoint resume."""
        return {"seed": self.seed, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict.get("seed", self.seed))
        self.history = list(state_dict.get("history", []))

    def check_units(self, pl_module: L.LightningModule, units: list[str], module: str) -> None:
        """Fail at ``setup`` (not after an epoch) when a unit's layer does not exist."""
        net = select_module(pl_module, module)
        for u in units:
            try:
                get_layer(net, parse_unit(u).layer)
            except KeyError as err:
                raise KeyError(f"{type(self).__name__}: unit {u!r}: {err.args[0]}") from None

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str = "epoch"
            ) -> Any:
        raise TypeError(f"{type(self).__name__} must define run()")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule
                                  ) -> None:
        if self.buffer is not None and not trainer.sanity_checking:
            self.buffer.reset()

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                outputs: Any, batch: Any, batch_idx: int,
                                dataloader_idx: int = 0) -> None:
        if self.buffer is not None and not trainer.sanity_checking and dataloader_idx == 0:
            self.buffer.add(batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.every_n_epochs == 0:
            return
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self.run(trainer, pl_module, tag="epoch")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_fit_end and (self.buffer is None or self.buffer.count):
            self.run(trainer, pl_module, tag="fit_end")
