"""The training part of ``make demo``: train the small classifier on the embedded photo
patches with the three analysis callbacks attached, logging to TensorBoard and CSV."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from lightning_fv.callbacks.feature_visualization import FeatureVisualizationCallback
from lightning_fv.callbacks.path_linearity import PathLinearityCallback
from lightning_fv.callbacks.sanity_check import SanityCheckCallback
from lightning_fv.data import PHOTO_CLASSES, PhotoPatchesDataModule
from lightning_fv.modules.classifier import ImageClassifier

DEMO_LAYERS = ["block1", "pool1", "block2", "pool2", "block3", "pool3", "block4", "pool", "fc"]


def run_training_demo(out_dir: str = "outputs/demo", epochs: int = 3,
                      n_train_per_class: int = 100, n_val_per_class: int = 20,
                      image_size: int = 32, steps: int = 48, seed: int = 0) -> dict[str, Any]:
    """Train ``ImageClassifier(SmallCNN)`` on :class:`PhotoPatchesDataModule` for ``epochs``
    epochs with :class:`FeatureVisualizationCallback` (all 10 class units and 4 ``block4``
    channels), :class:`SanityCheckCallback` (9 layers, Spearman, strides ``(10, 100, 5)``,
    one visualization per class) and :class:`PathLinearityCallback` (3 class units, 4 start
    images, 24 steps), logging to TensorBoard and CSV under ``out_dir``. Prints a table
    and returns the numbers. The defaults (32-px patches, few steps) keep it to a few
    minutes on 2 CPU cores; the callbacks run after every validation epoch.

    Args:
        out_dir: log directory (``tensorboard/`` and ``csv/`` inside).
        epochs: training epochs (the callbacks run after every validation epoch).
        n_train_per_class, n_val_per_class: photo patches per class.
        image_size: patch size in pixels (also the visualizations' size).
        steps: rendering steps of the visualizations.
        seed: global seed.

    Returns:
        ``{"val_acc", "score", "normalized": {layer: value}, "aga": {unit: degrees},
        "ald": {unit: value}, "mean_aga", "mean_ald", "tensorboard_dir", "csv_dir",
        "seconds"}``.
    """
    t0 = time.time()
    L.seed_everything(seed, verbose=False)
    out = Path(out_dir)
    data = PhotoPatchesDataModule(batch_size=64, n_train_per_class=n_train_per_class,
                                  n_val_per_class=n_val_per_class, size=image_size, seed=seed)
    model = ImageClassifier("small_cnn", num_classes=len(PHOTO_CLASSES), lr=0.05,
                            max_epochs=epochs)
    fv = FeatureVisualizationCallback(
        [f"fc:{c}" for c in range(10)] + [f"block4:{c}" for c in range(4)], module="model",
        image_size=image_size, steps=steps, at_fit_end=False)
    sanity = SanityCheckCallback(DEMO_LAYERS, num_classes=10, module="model", steps=steps,
                                 visualizations_per_class=1, max_images=10 * n_val_per_class)
    lin = PathLinearityCallback(["fc:0", "fc:2", "fc:5"], module="model", num_images=4,
                                steps=24)
    loggers = [TensorBoardLogger(str(out), name="tensorboard"),
               CSVLogger(str(out), name="csv")]
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=loggers,
                        callbacks=[fv, sanity, lin], log_every_n_steps=10,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(model, datamodule=data)
    res = sanity.last_result
    lin_last = lin.history[-1] if lin.history else {}
    val_acc = trainer.callback_metrics.get("val/acc")
    result: dict[str, Any] = {
        "val_acc": float(val_acc) if val_acc is not None else math.nan,
        "score": float(res.score) if res is not None else math.nan,
        "normalized": ({n: float(v) for n, v in zip(res.layers, res.normalized)}
                       if res is not None else {}),
        "aga": dict(lin_last.get("aga", {})), "ald": dict(lin_last.get("ald", {})),
        "mean_aga": lin_last.get("mean_aga", math.nan),
        "mean_ald": lin_last.get("mean_ald", math.nan),
        "tensorboard_dir": loggers[0].log_dir, "csv_dir": loggers[1].log_dir,
        "seconds": time.time() - t0,
    }
    logging.getLogger(__name__).info("%s", format_table(result))
    return result


def format_table(result: dict[str, Any]) -> str:
    """The demo's short report as text."""
    lines = [f"\nTraining demo finished in {result['seconds']:.0f} s "
             f"(val acc {result['val_acc']:.3f})", "",
             "Similarity sanity check (normalized: 1 = like same-class natural images, "
             "0 = like other-class images)", "| layer | normalized |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in result["normalized"].items()]
    verdict = "fail" if not result["score"] >= 0.5 else "pass"
    lines += [f"score (mean over included layers): {result['score']:.3f} -> the "
              f"visualizations {verdict} the check", "",
              "Path linearity (C.4)", "| unit | AGA (deg) | ALD |", "|---|---|---|"]
    lines += [f"| {u} | {result['aga'][u]:.1f} | {result['ald'][u]:.3f} |"
              for u in result["aga"]]
    lines += [f"| mean | {result['mean_aga']:.1f} | {result['mean_ald']:.3f} |", "",
              f"TensorBoard: tensorboard --logdir {result['tensorboard_dir']}",
              f"CSV + PNGs:  {result['csv_dir']}/metrics.csv, {result['csv_dir']}/images/"]
    return "\n".join(lines)


if __name__ == "__main__":
    torch.set_num_threads(max(1, torch.get_num_threads()))
    run_training_demo()
