"""The training part of ``make demo``: ``lightning-fv fit --config examples/configs/demo.yaml``
(the small classifier on the embedded photo patches with the three analysis callbacks,
logging to TensorBoard and CSV), run through LightningCLI, then a short report."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import yaml

#: the config this demo runs (the same file the README shows with ``lightning-fv fit``)
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "demo.yaml"


def run_training_demo(out_dir: str = "outputs/demo", epochs: int = 3,
                      overrides: list[str] | None = None,
                      config: str | Path = DEMO_CONFIG) -> dict[str, Any]:
    """Run ``fit`` of LightningCLI on ``config`` (``examples/configs/demo.yaml``: SmallCNN
    on 32-px photo patches, :class:`FeatureVisualizationCallback`,
    :class:`SanityCheckCallback`, :class:`PathLinearityCallback`) with its loggers'
    ``save_dir`` set to ``out_dir`` and ``epochs`` epochs, then log a table and return the
    numbers. Nothing of the config is restated here: change the YAML, or pass
    ``overrides`` (LightningCLI arguments such as ``--trainer.limit_train_batches 2``).

    Args:
        out_dir: log directory (``tensorboard/version_N`` and ``csv/version_N`` inside).
        epochs: training epochs (the callbacks run after every validation epoch).
        overrides: extra LightningCLI arguments appended after the config.
        config: the LightningCLI config file.

    Returns:
        ``{"val_acc", "score", "normalized": {layer: value}, "aga": {unit: degrees},
        "ald": {unit: value}, "mean_aga", "mean_ald", "tensorboard_dir", "csv_dir",
        "seconds"}``.
    """
    from lightning_fv.callbacks.path_linearity import PathLinearityCallback
    from lightning_fv.callbacks.sanity_check import SanityCheckCallback
    from lightning_fv.cli import run_lightning_cli

    t0 = time.time()
    loggers = yaml.safe_load(Path(config).read_text())["trainer"]["logger"]
    for lg in loggers:
        lg.setdefault("init_args", {})["save_dir"] = str(out_dir)
    cli = run_lightning_cli(["fit", "--config", str(config),
                             "--trainer.logger", json.dumps(loggers),
                             "--trainer.max_epochs", str(epochs),
                             "--model.init_args.max_epochs", str(epochs),
                             *(overrides or [])])
    trainer = cli.trainer
    sanity = next(c for c in trainer.callbacks if isinstance(c, SanityCheckCallback))
    lin = next(c for c in trainer.callbacks if isinstance(c, PathLinearityCallback))
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
        "tensorboard_dir": trainer.loggers[0].log_dir, "csv_dir": trainer.loggers[1].log_dir,
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
