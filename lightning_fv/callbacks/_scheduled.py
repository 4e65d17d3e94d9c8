"""The one callback template: schedule → shard → compute → gather → log, and its state.

A callback built on :class:`ScheduledCallback` defines what one item of work is and how to
compute and log it; the template does the rest, once for all callbacks:

1. *schedule*: after every ``every_n_epochs``-th validation epoch (``tag="epoch"``), at the
   end of fit (``at_fit_end``, ``tag="fit_end"``) and, for callbacks that set
   ``at_test_end``, at the end of testing (``tag="test"``); sanity-check epochs never count;
2. *shard*: rank ``r`` of ``w`` takes ``items[r::w]`` of :meth:`ScheduledCallback.items`;
3. *compute*: :meth:`ScheduledCallback.compute` inside
   :func:`~lightning_fv.callbacks._logging.isolated` (training untouched; a failure
   becomes an error message, never a crash unless ``on_error="raise"``);
4. *gather*: the fixed-shape tensors of every item through the torchmetrics
   :class:`~lightning_fv.analysis.metrics.ShardedStack` (exact, rank order irrelevant),
   the error messages with ``all_gather_object``;
5. *log*: errors every time (:func:`~lightning_fv.callbacks._logging.report_errors`),
   then :meth:`ScheduledCallback.log_results` on rank zero; the history entry on every rank.

Outputs are a pure function of (weights, epoch, seed, constructor arguments): every
random choice is seeded from ``seed`` alone, the global RNGs are restored, nothing of an
earlier run is reused.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor

from lightning_fv.callbacks._logging import (
    ImageBuffer,
    isolated,
    report_errors,
    select_module,
)
from lightning_fv.optvis.hooks import get_layer, parse_unit, parse_units
from lightning_fv.utils.device import model_device
from lightning_fv.utils.distributed import gather_objects, shard

ON_ERROR = ("warn", "raise")


class ScheduledCallback(L.Callback):
    """Base class of the analysis callbacks (see the module docstring for the template).

    Subclasses either implement the template's parts — :meth:`items`, :meth:`shapes`,
    :meth:`compute`, :meth:`summarize`, :meth:`log_results` — or override :meth:`run` entirely
    (then they call :meth:`report` with their gathered errors).

    A subclass that needs natural images sets ``self.buffer`` to an :class:`ImageBuffer`:
    it is refilled from the first validation dataloader every epoch, and the fit-end run
    is skipped while it is empty.

    ``state_key`` is built from the arguments named in ``key_args`` (default
    ``("log_prefix",)``), so two instances with different settings keep separate states in
    a checkpoint; Lightning refuses two instances with the same key in one Trainer.
    """

    every_n_epochs: int = 1
    at_fit_end: bool = False
    at_test_end: bool = False
    buffer: ImageBuffer | None = None
    log_prefix: str = ""
    module: str = ""
    seed: int = 0
    on_error: str = "warn"
    history: list[dict[str, Any]]
    key_args: ClassVar[tuple[str, ...]] = ("log_prefix",)

    # -- state ---------------------------------------------------------------------------
    @property
    def state_key(self) -> str:
        return self._generate_state_key(**{k: getattr(self, k) for k in self.key_args})

    def state_dict(self) -> dict[str, Any]:
        """The seed and the metric history survive a checkpoint resume."""
        return {"seed": self.seed, "history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.seed = int(state_dict.get("seed", self.seed))
        self.history = list(state_dict.get("history", []))

    # -- checks --------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Check ``on_error`` (Lightning itself refuses two callbacks with one state key)."""
        if self.on_error not in ON_ERROR:
            raise ValueError(f"{type(self).__name__}: on_error must be one of {ON_ERROR}, "
                             f"got {self.on_error!r}")

    def check_units(self, pl_module: L.LightningModule, units: list[str], module: str) -> None:
        """Fail at ``setup`` (not after an epoch) when a unit's layer does not exist."""
        net = select_module(pl_module, module)
        for u in units:
            try:
                get_layer(net, parse_unit(u).layer)
            except KeyError as err:
                raise KeyError(f"{type(self).__name__}: unit {u!r}: {err.args[0]}") from None

    def resolve_units(self, pl_module: L.LightningModule, spec: list[str],
                      image_size: int | None = None) -> list[str]:
        """``spec`` in the package's unit grammar (``"fc:3"``, ``"fc:0-3"``, ``"fc:*"``)
        expanded against the network into unit names; unknown layers fail here with the
        closest names."""
        net = select_module(pl_module, self.module)
        if all("*" not in s for s in spec):
            self.check_units(pl_module, [str(u) for u in parse_units(spec)], self.module)
        try:
            return [str(u) for u in parse_units(spec, net, image_size)]
        except KeyError as err:
            raise KeyError(f"{type(self).__name__}: units {spec}: {err.args[0]}") from None

    # -- the template --------------------------------------------------------------------
    def items(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[Any]:
        """The full, ordered work list (the same on every rank)."""
        raise TypeError(f"{type(self).__name__} must define items() or run()")

    def shapes(self, items: list[Any], trainer: L.Trainer, pl_module: L.LightningModule
               ) -> dict[str, tuple[int, ...]]:
        """Shape of each per-item result tensor, e.g. ``{"image": (3, 64, 64), "value": ()}``."""
        raise TypeError(f"{type(self).__name__} must define shapes() or run()")

    def compute(self, net: torch.nn.Module, items: list[Any], trainer: L.Trainer,
                pl_module: L.LightningModule) -> dict[str, Tensor]:
        """This rank's results ``{key: (len(items), *shape)}`` (inside :func:`isolated`).

        A callback whose items fail one by one may add ``"ok"`` (``(len(items),)`` bool) and
        ``"errors"`` (``list[str]``): rows with ``ok`` False are then left out and the
        messages reported. An exception fails the whole shard."""
        raise TypeError(f"{type(self).__name__} must define compute() or run()")

    def describe(self, items: list[Any]) -> str:
        """What failed, for error messages (e.g. ``"rendering unit(s) ['fc:1']"``)."""
        return f"items {items}"

    def summarize(self, items: list[Any], results: dict[str, Tensor], done: Tensor
                  ) -> dict[str, Any]:
        """History fields from the gathered ``results`` (``done[i]``: item ``i`` has them)."""
        return {}

    def log_results(self, trainer: L.Trainer, entry: dict[str, Any], items: list[Any],
            results: dict[str, Tensor], done: Tensor, tag: str) -> None:
        """Log on rank zero (only called when at least one item succeeded)."""

    def image_tag(self, name: str, tag: str) -> str:
        """``<log_prefix>/<name>``; images of a fit-end or test run get ``_<tag>`` appended,
        so they never replace the last epoch's image of the same step (MLflow, CSV)."""
        suffix = "" if tag in ("epoch", "manual") else f"_{tag}"
        return f"{self.log_prefix}/{name}{suffix}"

    def report(self, trainer: L.Trainer, errors: list[str]) -> None:
        """Report gathered errors every time (package logger, warning, experiment
        loggers), or raise on every rank with ``on_error="raise"``."""
        report_errors(trainer, type(self).__name__, errors, self.log_prefix, self.on_error)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str = "manual"
            ) -> dict[str, Any]:
        """Shard → compute → gather → log (every rank must call it); returns the entry."""
        t0 = time.time()
        net = select_module(pl_module, self.module)
        items = self.items(trainer, pl_module)
        index = shard(list(range(len(items))), trainer)
        mine = [items[i] for i in index]
        shapes = self.shapes(items, trainer, pl_module)
        part: dict[str, Any] | None = None
        errors: list[str] = []
        if mine:
            try:
                with isolated(net):
                    part = self.compute(net, mine, trainer, pl_module)
            except Exception as err:  # noqa: BLE001 - a failed item must not end training
                errors.append(f"{type(self).__name__}: {self.describe(mine)} failed: "
                              f"{type(err).__name__}: {err}")
        kept = index if part is not None else []
        if part is not None and "ok" in part:
            ok = [bool(v) for v in part.pop("ok")]
            errors += list(part.pop("errors", []))
            kept = [i for i, good in zip(index, ok) if good]
            part = {k: v[torch.tensor(ok, dtype=torch.bool)] for k, v in part.items()}
        results, done = self.gather(trainer, net, len(items), shapes, kept, part)
        parts = gather_objects(trainer, {"errors": errors, "items": mine})
        entry: dict[str, Any] = {"epoch": int(trainer.current_epoch),
                                 "step": int(trainer.global_step), "tag": tag,
                                 "errors": [e for p in parts for e in p["errors"]],
                                 "shards": [list(p["items"]) for p in parts]}
        self.report(trainer, entry["errors"])
        entry.update(self.summarize(items, results, done))
        if trainer.is_global_zero and bool(done.any()):
            self.log_results(trainer, entry, items, results, done, tag)
        self.history.append(entry)
        rank_zero_info(f"{type(self).__name__}: {int(done.sum())} of {len(items)} item(s) "
                       f"in {time.time() - t0:.1f} s")
        return entry

    @staticmethod
    def gather(trainer: L.Trainer, net: torch.nn.Module, num_items: int,
               shapes: dict[str, tuple[int, ...]], index: list[int],
               part: dict[str, Tensor] | None) -> tuple[dict[str, Tensor], Tensor]:
        """Every rank's rows of every key through :class:`ShardedStack` (a collective);
        returns ``({key: (num_items, *shape)} on the CPU, done (num_items,) bool)``."""
        from lightning_fv.analysis.metrics import ShardedStack

        device = _sync_device(trainer, net)
        out: dict[str, Tensor] = {}
        done = torch.zeros(num_items, dtype=torch.bool)
        for key, shape in shapes.items():
            rows = part[key] if part is not None else torch.zeros((0, *shape))
            # float64 on every rank: the same dtype everywhere, float32 rows exactly
            metric = ShardedStack(num_items, shape, dtype=torch.float64).to(device)
            metric.update(index, rows.detach().to(device, torch.float64))
            stack, filled = metric.compute()
            # (torchmetrics squeezes one-element results: restore the shapes)
            out[key] = stack.cpu().reshape(num_items, *shape)
            done = filled.cpu().reshape(num_items)
        return out, done

    # -- Lightning hooks -----------------------------------------------------------------
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

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.at_test_end:
            self.run(trainer, pl_module, tag="test")


def _sync_device(trainer: L.Trainer, net: torch.nn.Module) -> torch.device:
    """Where the gather's tensors live: the strategy's root device (NCCL needs CUDA
    tensors), else the network's device."""
    strategy = getattr(trainer, "strategy", None)
    root = getattr(strategy, "root_device", None)
    return root if isinstance(root, torch.device) else model_device(net)
