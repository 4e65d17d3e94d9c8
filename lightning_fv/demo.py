"""``make demo``: the main job on the embedded data, on CPU in a few minutes.

1. Render every class unit and a sample of hidden channels of the bundled photo-patches
   model (``lightning-fv render``; ``outputs/demo/render/version_N/*.png``, one labelled
   grid per layer).
2. ``lightning-fv fit --config examples/configs/demo.yaml``: train the small classifier on
   the embedded photo patches with the feature visualization, sanity-check and
   path-linearity callbacks attached, logging to TensorBoard and CSV under
   ``outputs/demo`` (when the callbacks are installed).

Arguments this script does not know (``--trainer.limit_train_batches 2`` …) are passed to
LightningCLI for step 2.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from lightning_fv.commands.render import render
from lightning_fv.utils.console import enable_console_logging
from lightning_fv.utils.files import next_version_dir

log = logging.getLogger("lightning_fv.demo")

DEMO_UNITS = ["fc:*", "block4:0-15", "block3:0-15", "block2:0-15"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/demo", help="output folder")
    ap.add_argument("--steps", type=int, default=128, help="rendering steps per unit")
    ap.add_argument("--units", nargs="+", default=DEMO_UNITS, help="units to render")
    ap.add_argument("--image-size", type=int, default=64, help="rendered image side (px)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs")
    ap.add_argument("--skip-training", action="store_true", help="only render")
    ap.add_argument("--progress", type=lambda v: v.lower() not in ("0", "false", "no"),
                    default=True, help="progress bars (false for scripts)")
    args, lightning_args = ap.parse_known_args(argv)
    enable_console_logging()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    t0 = time.time()
    paths = render(model="bundled", units=args.units, image_size=args.image_size,
                   steps=args.steps, output_dir=str(next_version_dir(out / "render")),
                   progress=args.progress)
    log.info("\nRendered the bundled model's units in %.0f s:", time.time() - t0)
    for p in paths:
        log.info("  %s", p)
    if args.skip_training:
        return
    try:
        from lightning_fv.commands.demo_training import run_training_demo
    except ImportError as err:  # the training demo ships with the analysis callbacks
        log.info("\n(training demo unavailable: %s)", err)
        return
    if not args.progress:
        lightning_args = ["--trainer.enable_progress_bar", "false", *lightning_args]
    run_training_demo(out_dir=str(out), epochs=args.epochs, overrides=lightning_args)


if __name__ == "__main__":
    main()
