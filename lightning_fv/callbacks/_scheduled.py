"""The schedule shared by the analysis callbacks (one implementation, four callbacks)."""

from __future__ import annotations

from typing import Any

import lightning as L

from lightning_fv.callbacks._logging import ImageBuffer


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
