"""``AuditReportCallback``: the audit report (``lightning-fv audit``) at the end of fit or
every N epochs, logged to the run's experiment trackers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_fv.callbacks._logging import _kind, isolated, log_image, log_scalars, select_module
from lightning_fv.callbacks._scheduled import ScheduledCallback
from lightning_fv.report import SECTIONS, AuditResult, ReportPaths, audit, write_report

#: headline numbers logged as scalars: (section, key in its numbers)
HEADLINES = (("sanity", "score"), ("detector", "fraction_natural/all"),
             ("robustness", "clean_accuracy"), ("robustness", "robust_accuracy"))
#: figures logged as images: (section, image name)
FIGURES = (("sanity", "figure"), ("sanity", "ood/figure"), ("detector", "figure"),
           ("path_linearity", "bars"), ("path_linearity", "agpa"))


class AuditReportCallback(ScheduledCallback):
    """Write the audit report (:func:`lightning_fv.report.audit` +
    :func:`~lightning_fv.report.write_report`) of the trained network and log it. The
    schedule and state key are :class:`ScheduledCallback`'s; the report is one piece of
    work, so :meth:`run` is overridden whole.

    Natural images are the first ``max_images`` of the validation data (the datamodule's
    ``val_dataloader`` or the trainer's validation loader; rank zero's under DDP). Every
    rank takes part: the renders, the sanity check's layers and the path-linearity units are
    sharded across the processes (``audit(..., distributed=trainer)``); rank zero writes and
    logs the report. The report goes to ``output_dir/version_N`` (default
    ``<trainer.log_dir>/audit``) and is logged as:

    - MLflow: the whole folder as run artifacts under ``<log_prefix>/version_N``;
    - W&B: a ``wandb.Artifact`` of type ``"audit-report"`` holding the folder;
    - TensorBoard: ``report.md`` as text (``<log_prefix>/report``);
    - every logger: headline scalars (``<log_prefix>/sanity/score`` …) and the figures as
      images (``<log_prefix>/sanity/figure`` …) through the package's logging helpers.

    Args:
        layers: layers of the network to audit.
        module: attribute path of the network in the LightningModule (``""`` = itself).
        every_n_epochs: also write a report after every n-th validation epoch (0 = never).
        at_fit_end: write one when fit ends.
        output_dir: root of the versioned report folders (``None``: ``<log_dir>/audit``).
        log_prefix: tag / artifact prefix.
        units_per_layer, steps, preset, seed, max_images, class_layer,
        visualizations_per_class, metric, detector_ckpt, path_units_per_layer, path_images,
        path_steps, pgd_eps, pgd_norm, pgd_steps, robust_images, sections, batch_size: as in
        :func:`lightning_fv.report.audit`.
    """

    def __init__(self, layers: list[str], module: str = "", every_n_epochs: int = 0,
                 at_fit_end: bool = True, output_dir: str | None = None,
                 log_prefix: str = "audit", units_per_layer: int = 4, steps: int = 64,
                 preset: str = "lucid", seed: int = 0, max_images: int = 200,
                 class_layer: str = "fc", visualizations_per_class: int = 1,
                 metric: str = "spearman", detector_ckpt: str | None = None,
                 path_units_per_layer: int = 1, path_images: int = 4, path_steps: int = 32,
                 pgd_eps: float | None = None, pgd_norm: str = "l2", pgd_steps: int = 10,
                 robust_images: int = 100, sections: list[str] | None = None,
                 batch_size: int = 64) -> None:
        super().__init__()
        if not layers:
            raise ValueError("AuditReportCallback needs at least one layer")
        if every_n_epochs < 0:
            raise ValueError(f"every_n_epochs must be >= 0, got {every_n_epochs}")
        bad = [s for s in sections or [] if s not in SECTIONS]
        if bad:
            raise ValueError(f"unknown section(s) {bad}; valid: {list(SECTIONS)}")
        self.layers = list(layers)
        self.module = module
        self.every_n_epochs = every_n_epochs
        self.at_fit_end = at_fit_end
        self.output_dir = output_dir
        self.log_prefix = log_prefix
        self.seed = seed
        self.audit_kwargs: dict[str, Any] = dict(
            units_per_layer=units_per_layer, steps=steps, preset=preset, seed=seed,
            max_images=max_images, class_layer=class_layer,
            visualizations_per_class=visualizations_per_class, metric=metric,
            detector_ckpt=detector_ckpt, path_units_per_layer=path_units_per_layer,
            path_images=path_images, path_steps=path_steps, pgd_eps=pgd_eps,
            pgd_norm=pgd_norm, pgd_steps=pgd_steps, robust_images=robust_images,
            sections=list(sections or SECTIONS), batch_size=batch_size)
        self.reports: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []
        self.last_result: AuditResult | None = None

    def state_dict(self) -> dict[str, Any]:
        """Where the reports went survives a resume."""
        return {**super().state_dict(), "reports": list(self.reports)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.reports = list(state_dict.get("reports", []))

    def _data(self, trainer: L.Trainer) -> Any:
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "val_dataloader"):
            return dm
        loaders = trainer.val_dataloaders
        if isinstance(loaders, (list, tuple)):
            loaders = loaders[0] if loaders else None
        if loaders is None:
            raise ValueError("AuditReportCallback needs validation data (a datamodule with "
                             "val_dataloader or val_dataloaders passed to fit)")
        return loaders

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, tag: str = "fit_end"
            ) -> ReportPaths | None:
        """Audit on every rank (sharded), write and log on rank zero (every rank must call
        it)."""
        paths = None
        net = select_module(pl_module, self.module)
        with isolated(net):
            result = audit(net, self._data(trainer), layers=self.layers,
                           model_name=f"{type(net).__name__} (epoch "
                                      f"{trainer.current_epoch}, {tag})",
                           distributed=trainer, **self.audit_kwargs)
        self.last_result = result
        if trainer.is_global_zero:
            root = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir)
                        / "audit")
            paths = write_report(result, root)
            self.reports.append({"epoch": int(trainer.current_epoch),
                                 "step": int(trainer.global_step), "tag": tag,
                                 "html": str(paths.html), "failed": result.failed})
            self._log(trainer, result, paths)
            for name in result.failed:
                rank_zero_warn(f"AuditReportCallback: section {name!r} failed: "
                               f"{result.sections[name].error}")
            rank_zero_info(f"AuditReportCallback: report written to {paths.html}")
        if trainer.world_size > 1:
            trainer.strategy.barrier("audit_report")
        return paths

    def _log(self, trainer: L.Trainer, result: AuditResult, paths: ReportPaths) -> None:
        p = self.log_prefix
        scalars = {f"{p}/{sec}/{key}": result.sections[sec].numbers[key]
                   for sec, key in HEADLINES if key in result.sections[sec].numbers}
        if scalars:
            log_scalars(trainer, scalars)
        for sec, name in FIGURES:
            png = result.sections[sec].images.get(name)
            if png is not None:
                log_image(trainer, f"{p}/{sec}/{name}", _png_to_array(png))
        markdown = paths.markdown.read_text(encoding="utf-8")
        for logger in trainer.loggers:
            kind = _kind(logger)
            if kind == "TensorBoard":
                logger.experiment.add_text(f"{p}/report", markdown,
                                           global_step=trainer.global_step)
                logger.experiment.flush()
            elif kind == "MLFlow":
                logger.experiment.log_artifacts(logger.run_id, str(paths.directory),
                                                artifact_path=f"{p}/{paths.directory.name}")
            elif kind == "Wandb":
                import wandb

                art = wandb.Artifact(name=f"{p}-report", type="audit-report",
                                     metadata={"version": paths.directory.name})
                art.add_dir(str(paths.directory))
                logger.experiment.log_artifact(art)


def _png_to_array(png: bytes) -> np.ndarray:
    """``(H, W, 3)`` uint8 array of PNG bytes."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB")).copy()


__all__ = ["AuditReportCallback"]
