"""``make demo``: the main job on the embedded data, on CPU in a few minutes.

1. Render every class unit and a sample of hidden channels of the bundled photo-patches
   model (``outputs/demo/render/*.png``).
2. Train the small classifier on the embedded photo patches with the feature
   visualization, sanity-check and path-linearity callbacks attached, logging to
   TensorBoard and CSV under ``outputs/demo`` (when the callbacks are installed).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from lightning_fv.commands.render import render
from lightning_fv.utils.console import enable_console_logging

log = logging.getLogger("lightning_fv.demo")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--skip-training", action="store_true")
    args = ap.parse_args(argv)
    enable_console_logging()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    t0 = time.time()
    paths = render(
        model="bundled",
        units=["fc:*", "block4:0-15", "block3:0-15", "block2:0-15"],
        image_size=64,
        steps=args.steps,
        output_dir=str(out / "render"),
    )
    log.info("\nRendered 58 units of the bundled model in %.0f s:", time.time() - t0)
    for p in paths:
        log.info("  %s", p)
    if args.skip_training:
        return
    try:
        from lightning_fv.commands.demo_training import run_training_demo
    except ImportError as err:  # the training demo ships with the analysis callbacks
        log.info("\n(training demo unavailable: %s)", err)
        return
    run_training_demo(out_dir=str(out), epochs=args.epochs)


if __name__ == "__main__":
    main()
