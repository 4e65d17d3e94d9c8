"""Shared helpers of the analysis callbacks: one way to log scalars, images and figures to
any Lightning logger, and the isolation utility they all use (sharding lives in
:mod:`lightning_fv.utils.distributed`).

Logging (rank zero only; other ranks return immediately):

- TensorBoard: ``add_scalar`` via ``log_metrics``, ``add_image`` for images and figures.
- CSV: scalars in ``metrics.csv``; images as PNG files in an ``images/`` folder beside
  ``metrics.csv`` (``<log_dir>/images/<tag>_step<step>.png``, ``/`` in tags → ``__``).
- MLflow: ``log_metrics``; images as run artifacts ``<tag>/step_<step>.png`` (a second
  image with the same tag and step in the same run gets ``step_<step>_<k>.png`` instead
  of replacing the first).
- W&B (online or offline): ``log_metrics``; images with ``WandbLogger.log_image``.
- Any other logger: scalars through ``log_metrics``; images if its ``experiment`` has
  ``add_image`` (TensorBoard-like), otherwise skipped with a one-time warning.

Errors of a callback (:func:`report_errors`) go, every time, to the package logger
(``logging.getLogger("lightning_fv.callbacks")``), to a ``UserWarning`` that names the
epoch and step (so Python never suppresses a repeat), and to every experiment logger:
TensorBoard text ``<prefix>/errors``, CSV ``errors.txt`` beside ``metrics.csv``, an MLflow
artifact ``<prefix>/errors/step_<step>.txt``, a W&B table; plus the scalar
``<prefix>/errors`` (number of errors) through ``log_metrics``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn

from lightning_fv.optvis.hooks import preserved_state
from lightning_fv.utils.distributed import gather_objects
from lightning_fv.utils.rng import preserved_rng

T = TypeVar("T")
_warned: set[str] = set()
_mlflow_written: set[tuple[str, str]] = set()  # (run id, artifact file) logged by this process
log = logging.getLogger("lightning_fv.callbacks")


def _to_uint8_hwc(image: Tensor | np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] tensor, or ``(H, W, 3)`` uint8 array → ``(H, W, 3)`` uint8."""
    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        return arr if arr.ndim == 3 else np.repeat(arr[..., None], 3, axis=2)
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    img = image.detach().float().cpu().clamp(0, 1)
    if img.shape[0] == 1:
        img = img.repeat(3, 1, 1)
    return (img * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _safe(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "__", tag.replace("/", "__"))


def _kind(logger: Any) -> str:
    name = type(logger).__name__
    for kind in ("TensorBoard", "CSV", "MLFlow", "Wandb"):
        if name.startswith(kind):
            return kind
    return name


def log_scalars(trainer: Any, metrics: dict[str, float], step: int | None = None) -> None:
    """Log ``name → float`` to every logger of ``trainer`` (rank zero only). NaN values
    (e.g. excluded layers) are dropped."""
    if not trainer.is_global_zero or not trainer.loggers:
        return
    clean = {k: float(v) for k, v in metrics.items() if np.isfinite(float(v))}
    step = trainer.global_step if step is None else step
    for logger in trainer.loggers:
        logger.log_metrics(clean, step=step)
        if _kind(logger) == "CSV":
            logger.save()


def log_image(trainer: Any, tag: str, image: Tensor | np.ndarray, step: int | None = None
              ) -> list[str]:
    """Log one RGB image (``(C, H, W)`` in [0, 1] or ``(H, W, 3)`` uint8) under ``tag``.

    Returns where it went (file paths or ``"<logger>:<tag>"`` strings), rank zero only.
    """
    if not trainer.is_global_zero or not trainer.loggers:
        return []
    arr = _to_uint8_hwc(image)
    step = trainer.global_step if step is None else step
    written = []
    for logger in trainer.loggers:
        kind = _kind(logger)
        if kind == "TensorBoard":
            logger.experiment.add_image(tag, arr, global_step=step, dataformats="HWC")
            logger.experiment.flush()
            written.append(f"tensorboard:{tag}")
        elif kind == "CSV":
            from PIL import Image

            path = Path(logger.log_dir) / "images" / f"{_safe(tag)}_step{step}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            k = 1
            while path.exists():  # e.g. an epoch-end and a fit-end image at the same step
                path = path.with_name(f"{_safe(tag)}_step{step}_{k}.png")
                k += 1
            Image.fromarray(arr).save(path)
            written.append(str(path))
        elif kind == "MLFlow":
            name = _mlflow_name(logger.run_id, f"{tag}/step_{step}", ".png")
            logger.experiment.log_image(logger.run_id, arr, artifact_file=name)
            written.append(f"mlflow:{name}")
        elif kind == "Wandb":
            logger.log_image(key=tag, images=[arr], step=step)
            written.append(f"wandb:{tag}")
        elif hasattr(getattr(logger, "experiment", None), "add_image"):
            logger.experiment.add_image(tag, arr, global_step=step, dataformats="HWC")
            written.append(f"{kind}:{tag}")
        elif kind not in _warned:
            _warned.add(kind)
            warnings.warn(f"lightning_fv callbacks: logger {kind} cannot store images; "
                          "only scalars are logged to it", stacklevel=2)
    return written


def _mlflow_name(run_id: str, stem: str, suffix: str) -> str:
    """``stem + suffix``, or ``stem_<k> + suffix`` if this process already wrote it to the
    run (MLflow would silently replace the artifact)."""
    name, k = f"{stem}{suffix}", 1
    while (run_id, name) in _mlflow_written:
        name, k = f"{stem}_{k}{suffix}", k + 1
    _mlflow_written.add((run_id, name))
    return name


def log_grid(trainer: Any, tag: str, images: Tensor, labels: Sequence[str] | None = None,
             values: Sequence[float] | Tensor | None = None, nrow: int | None = None,
             tile_size: int | None = 128, step: int | None = None) -> list[str]:
    """Log ``(N, C, H, W)`` images in [0, 1] as one grid under ``tag`` (rank zero only).

    With ``tile_size`` every tile is enlarged (nearest neighbour, integer factor) to at
    least that many pixels and captioned with ``labels[i]`` and ``values[i]``; with
    ``tile_size=None`` the plain grid of the raw pixels is logged (no captions).
    """
    if not trainer.is_global_zero or not trainer.loggers:
        return []
    from lightning_fv.utils.images import image_grid

    images = images.detach().float().cpu()
    if tile_size is None:
        grid = image_grid(images, nrow=nrow)
    else:
        grid = image_grid(images, nrow=nrow, labels=labels, values=values,
                          tile_size=tile_size)
    return log_image(trainer, tag, grid, step)


def report_errors(trainer: Any, source: str, errors: Sequence[str], prefix: str,
                  on_error: str = "warn", step: int | None = None) -> None:
    """Report a callback's ``errors`` (already gathered from all ranks) every time.

    Every rank must call it with the same ``errors``. ``on_error="warn"``: rank zero logs
    each error through the package logger, a ``UserWarning`` naming epoch and step, and
    every experiment logger (see the module docstring); ``on_error="raise"``: every rank
    raises :class:`RuntimeError` with all errors (so no rank waits in a collective).
    """
    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")
    if not errors:
        return
    epoch = int(getattr(trainer, "current_epoch", 0))
    step = int(getattr(trainer, "global_step", 0)) if step is None else step
    where = f"[epoch {epoch}, step {step}]"
    if on_error == "raise":
        raise RuntimeError(f"{source} {where} (on_error='raise'):\n" + "\n".join(errors))
    if not trainer.is_global_zero:
        return
    for e in errors:
        log.warning("%s %s", e, where)
        warnings.warn(f"{e} {where}", UserWarning, stacklevel=2)
    text = "\n".join(f"{e} {where}" for e in errors)
    tag = f"{prefix}/errors"
    for logger in trainer.loggers:
        kind = _kind(logger)
        try:
            if kind == "TensorBoard":
                logger.experiment.add_text(tag, text, global_step=step)
            elif kind == "CSV":
                path = Path(logger.log_dir) / "errors.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(f"{source}\t{epoch}\t{step}\t" + text.replace("\n", " | ")
                             + "\n")
            elif kind == "MLFlow":
                name = _mlflow_name(logger.run_id, f"{tag}/step_{step}", ".txt")
                logger.experiment.log_text(logger.run_id, text, artifact_file=name)
            elif kind == "Wandb":
                logger.log_text(key=tag, columns=["epoch", "step", "error"],
                                data=[[epoch, step, e] for e in errors])
            logger.log_metrics({tag: float(len(errors))}, step=step)
            if kind == "CSV":
                logger.save()
        except Exception as err:  # noqa: BLE001 - reporting must not hide the original error
            log.warning("could not report %s errors to %s: %s", source, kind, err)


def log_figure(trainer: Any, tag: str, fig: Any, step: int | None = None) -> list[str]:
    """Render a matplotlib figure and log it as an image (then close it)."""
    if not trainer.is_global_zero:
        return []
    from lightning_fv.analysis.figures import figure_to_array

    arr = figure_to_array(fig)
    fig.clear()
    return log_image(trainer, tag, arr, step)


# --------------------------------------------------------------------------- distributed


# --------------------------------------------------------------------------- isolation


@contextmanager
def isolated(model: nn.Module) -> Iterator[None]:
    """Run analysis work inside any Lightning hook without changing training.

    Re-enables autograd even under the Trainer's ``inference_mode=True``; restores the
    Python/NumPy/torch RNGs, every module's training flag, ``requires_grad`` and
    parameter gradients on exit. Tensors created earlier in inference mode must be
    ``.clone()``d inside the block before they enter autograd.
    """
    with preserved_rng(), torch.inference_mode(False), torch.enable_grad(), \
            preserved_state(model):
        yield


def select_module(pl_module: nn.Module, module: str) -> nn.Module:
    """``pl_module`` itself (``module=""``) or its sub-module named ``module``."""
    if not module:
        return pl_module
    from lightning_fv.optvis.hooks import get_layer

    return get_layer(pl_module, module)


class ImageBuffer:
    """Keeps up to ``max_images`` ``(x, y)`` validation images on the CPU (per rank)."""

    def __init__(self, max_images: int) -> None:
        self.max_images = max_images
        self.images: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.count = 0

    def reset(self) -> None:
        self.images, self.labels, self.count = [], [], 0

    def add(self, batch: Any) -> None:
        if self.count >= self.max_images:
            return
        if isinstance(batch, dict):
            x, y = batch.get("image", batch.get("x")), batch.get("label", batch.get("y"))
        else:
            x, y = batch[0], batch[1] if len(batch) > 1 else None
        if x is None or y is None:
            raise TypeError("validation batches must be (images, labels) tuples or dicts "
                            "with 'image'/'label' keys for the lightning_fv callbacks")
        take = min(x.shape[0], self.max_images - self.count)
        self.images.append(x[:take].detach().cpu().clone())
        self.labels.append(y[:take].detach().cpu().clone())
        self.count += take

    def gathered(self, trainer: Any) -> tuple[Tensor, Tensor]:
        """All ranks' images and labels (a collective), as normal (non-inference) tensors."""
        x = torch.cat(self.images) if self.images else torch.empty(0)
        y = torch.cat(self.labels) if self.labels else torch.empty(0, dtype=torch.long)
        parts = gather_objects(trainer, (x, y))
        xs = [p[0] for p in parts if p[0].numel()]
        ys = [p[1] for p in parts if p[0].numel()]
        if not xs:
            return torch.empty(0), torch.empty(0, dtype=torch.long)
        with torch.inference_mode(False):
            return torch.cat(xs).clone(), torch.cat(ys).long().clone()
