"""``make demo``: the main job on the embedded data, on CPU in a few minutes.

1. Render every class unit and a sample of hidden channels of the bundled photo-patches
   model (``lightning-fv render``; ``outputs/demo/render/version_N/*.png``, one labelled
   grid per layer).
2. ``lightning-fv fit --config examples/configs/demo.yaml``: train the small classifier on
   the embedded photo patches with the feature visualization, sanity-check and
   path-linearity callbacks attached, logging to TensorBoard and CSV under
   ``outputs/demo`` (when the callbacks are installed).
3. ``lightning-fv audit --config examples/configs/audit_photo_patches.yaml``: the bundled
   model's audit report (``outputs/demo/audit/version_N/report.html``, self-contained),
   its path printed last.

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
AUDIT_CONFIG = Path("examples/configs/audit_photo_patches.yaml")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="outputs/demo", help="output folder")
    ap.add_argument("--steps", type=int, default=128, help="rendering steps per unit")
    ap.add_argument("--units", nargs="+", default=DEMO_UNITS, help="units to render")
    ap.add_argument("--image-size", type=int, default=64, help="rendered image side (px)")
    ap.add_argument("--epochs", type=int, default=3, help="training epochs")
    ap.add_argument("--skip-training", action="store_true", help="skip step 2")
    ap.add_argument("--skip-audit", action="store_true", help="skip step 3")
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
    if not args.skip_training:
        from lightning_fv.commands.demo_training import run_training_demo

        if not args.progress:
            lightning_args = ["--trainer.enable_progress_bar", "false", *lightning_args]
        run_training_demo(out_dir=str(out), epochs=args.epochs, overrides=lightning_args)
    if not args.skip_audit:
        report = run_audit_demo(out / "audit", args.steps, args.progress)
        log.info("\nAudit report of the bundled model (open it in a browser): %s", report)


def run_audit_demo(root: Path, steps: int, progress: bool) -> Path:
    """Step 3: ``lightning-fv audit --config examples/configs/audit_photo_patches.yaml``
    through the CLI, with fewer steps than the config's when the demo itself was asked for
    fewer (``--steps``). Returns the report's path."""
    from lightning_fv.cli import main as cli

    args = ["audit", "--config", str(AUDIT_CONFIG), "--output_dir", str(root),
            "--steps", str(min(steps, 64)), "--path_steps", str(min(steps, 24)),
            "--progress", str(progress).lower()]
    if steps < 16:  # a smoke run (tests): the smallest data that exercises every section
        args += ["--max_images", "40", "--robust_images", "8", "--pgd_steps", "1",
                 "--units_per_layer", "1", "--path_images", "2"]
    cli(args)
    versions = sorted(root.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return versions[-1] / "report.html"

if __name__ == "__main__":
    main()
