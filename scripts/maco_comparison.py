"""Pixel vs Fourier vs MACO vs feature accentuation on a bundled photo model (issue 15 §5):
the SmallCNN (``--model photo_patches``, default) or the tiny ViT
(``--model photo_patches_vit``).

For 16 units (CNN: ``fc:0-9``, ``block4:0-5``; ViT: ``head:0-9``, ``blocks.3:0-5``, channels
averaged over the patch tokens) each method renders one image per unit as one batch; the
script reports the objective reached and the fraction of images that the package's
visualization detector (Table 3 architecture, `dont-trust-your-eyes…` App. C.1) calls
natural, and prints a Markdown table (the ones in ``docs/maco.md``).

The detector is trained here in about a minute: natural = 240 training photo patches,
visualizations = the 15 log-spaced trajectory images (``record="log"``) of standard Fourier
renders of units 0–15 of the model's third stage (CNN ``block3``, ViT ``blocks.2``; disjoint
from the compared units); it is checked on validation patches and the trajectories of units
16–23 of the same layer.

Writes the figure and ``results.json`` to a fresh ``<out>/version_N`` folder
(``outputs/maco_comparison`` by default); ``--figures docs/figures`` also copies the figure
there (``maco_comparison.png``, for the ViT ``maco_comparison_vit.png``).

    OMP_NUM_THREADS=2 python -u scripts/maco_comparison.py --steps 64   # ~5 min, 2 CPU cores
    OMP_NUM_THREADS=2 python -u scripts/maco_comparison.py --steps 64 --model photo_patches_vit
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_fv.data.embedded import photo_patches
from lightning_fv.manipulation.detector_net import DetectorCNN
from lightning_fv.models import bundled_model
from lightning_fv.modules.feature_visualizer import photo_spectrum, seed_photos
from lightning_fv.optvis.accentuation import DEFAULT_WEIGHT, accentuate
from lightning_fv.optvis.hooks import capture, parse_units
from lightning_fv.optvis.maco import render_maco
from lightning_fv.optvis.objectives import units_objective
from lightning_fv.optvis.render import render_units
from lightning_fv.utils.files import next_version_dir
from lightning_fv.utils.images import save_grid

SIZE = 64  # the bundled models' input size


@dataclass(frozen=True)
class Setup:
    """The layer names one bundled model is compared on.

    Attributes:
        units: the 16 compared units (class logits and units of the last stage).
        detector_layer: the layer whose units 0–15 (training) and 16–23 (checking) give the
            detector's visualization trajectories (disjoint from ``units``).
        accent_layer: accentuation's regularized layer.
        figure: the file name of the figure.
    """

    units: str
    detector_layer: str
    accent_layer: str
    figure: str


SETUPS = {
    "photo_patches": Setup("fc:0-9, block4:0-5", "block3", "block2", "maco_comparison.png"),
    "photo_patches_vit": Setup("head:0-9, blocks.3:0-5", "blocks.2", "blocks.1",
                               "maco_comparison_vit.png"),
}


def train_detector(net: torch.nn.Module, steps: int, layer: str = "block3",
                   epochs: int = 6) -> tuple[DetectorCNN, dict]:
    """A detector on photo patches vs standard-render trajectories of ``layer``'s units
    (SGD, App. C.1 settings)."""
    def trajectories(units: str) -> torch.Tensor:
        res = render_units(net, units, thresholds=(steps,), image_size=SIZE, record="log",
                           record_grads=False, seed=1)
        return res.trajectory.images.flatten(0, 1)

    vis_tr, vis_va = trajectories(f"{layer}:0-15"), trajectories(f"{layer}:16-23")
    nat_tr, _ = photo_patches("train", n_per_class=24, size=SIZE)
    nat_va, _ = photo_patches("val", n_per_class=20, size=SIZE)
    x = torch.cat([nat_tr, vis_tr])
    y = torch.cat([torch.ones(len(nat_tr)), torch.zeros(len(vis_tr))])
    torch.manual_seed(0)
    det = DetectorCNN(SIZE)
    opt = torch.optim.SGD(det.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-5)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(32):
            opt.zero_grad()
            F.binary_cross_entropy_with_logits(det(x[idx]), y[idx]).backward()
            opt.step()
    det.eval()
    with torch.no_grad():
        acc = {"val_natural_called_natural": float((det(nat_va) > 0).float().mean()),
               "val_vis_called_vis": float((det(vis_va) <= 0).float().mean()),
               "train_images": len(x)}
    return det, acc


@torch.no_grad()
def whole_image_values(net: torch.nn.Module, units: list[str],
                       images: torch.Tensor) -> torch.Tensor:
    """Each unit's objective on its whole image, resized to the model's 64 px."""
    x = images if images.shape[-1] == SIZE else F.interpolate(
        images, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    obj = units_objective(parse_units(units))
    with capture(net, obj.model_layers) as acts:
        net(x)
        return obj(acts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--model", choices=sorted(SETUPS), default="photo_patches",
                    help="the bundled model: the SmallCNN or the tiny ViT")
    ap.add_argument("--out", default="outputs/maco_comparison",
                    help="root of the versioned result folders (version_N)")
    ap.add_argument("--figures", default=None,
                    help="also copy the figure into this folder (e.g. docs/figures)")
    args = ap.parse_args()
    t_all = time.time()
    setup = SETUPS[args.model]
    out_dir = next_version_dir(args.out)
    net = bundled_model(args.model).eval()
    units = [str(u) for u in parse_units(setup.units)]
    n = len(units)

    t0 = time.time()
    det, det_acc = train_detector(net, args.steps, setup.detector_layer)
    print(f"detector: {det_acc} ({time.time() - t0:.0f} s)")

    runs: dict[str, dict] = {}

    def record(name: str, images: torch.Tensor, optimized: torch.Tensor, t: float) -> None:
        with torch.no_grad():
            p_nat = torch.sigmoid(det.resized(images.float()))
        runs[name] = {"images": images, "optimized": optimized,
                      "whole": whole_image_values(net, units, images),
                      "natural": float((p_nat > 0.5).float().mean()), "seconds": t}
        print(f"{name}: {t:.0f} s")

    t0 = time.time()
    r = render_units(net, units, thresholds=(args.steps,), image_size=SIZE,
                     param={"fft": False, "decorrelate": False}, seed=0)
    record("pixel", r.final, r.values[args.steps], time.time() - t0)
    t0 = time.time()
    r = render_units(net, units, thresholds=(args.steps,), image_size=SIZE, seed=0)
    record("fourier", r.final, r.values[args.steps], time.time() - t0)
    t0 = time.time()
    canvas = round(1280 / 224 * SIZE)
    m = render_maco(net, units, steps=args.steps, image_size=canvas, input_size=SIZE,
                    spectrum=photo_spectrum(canvas), seed=0)
    record("maco", m.images_01(), m.values, time.time() - t0)
    t0 = time.time()
    seeds = seed_photos(n, SIZE)
    a = accentuate(net, units, seeds, layer=setup.accent_layer, weight=DEFAULT_WEIGHT,
                   steps=args.steps, seed=0)
    record("accentuation", a.images, a.values, time.time() - t0)
    with torch.no_grad():
        p_seed = torch.sigmoid(det(seeds))
    start = whole_image_values(net, units, seeds)

    rows = []
    head = ("| method | objective as optimized (mean over 16 units) | objective of the whole "
            "image at 64 px | called natural by the detector | time (s) |")
    print(head)
    print("|---|---|---|---|---|")
    for name, v in runs.items():
        row = (f"| {name} | {float(v['optimized'].mean()):.2f} | {float(v['whole'].mean()):.2f} "
               f"| {v['natural']:.0%} | {v['seconds']:.0f} |")
        rows.append(row)
        print(row)
    print(f"| (the accentuation seeds) | — | {float(start.mean()):.2f} | "
          f"{float((p_seed > 0.5).float().mean()):.0%} | — |")
    total = time.time() - t_all
    print(f"accentuation: D({setup.accent_layer}) mean {float(a.distances.mean()):.4f}; total "
          f"{total:.0f} s")

    grid = torch.cat([F.interpolate(runs[k]["images"], size=(SIZE, SIZE), mode="bilinear",
                                    antialias=True, align_corners=False)
                      if runs[k]["images"].shape[-1] != SIZE else runs[k]["images"]
                      for k in runs] + [seeds])
    names = list(runs) + ["seed"]
    figure = out_dir / setup.figure
    save_grid(grid, figure, nrow=n, labels=[u for _ in names for u in units],
              row_labels=names, tile_size=96)
    (out_dir / "results.json").write_text(json.dumps({
        "model": args.model, "detector": det_acc, "units": units, "steps": args.steps,
        "seed_objective_whole": float(start.mean()),
        "seed_called_natural": float((p_seed > 0.5).float().mean()),
        "accentuation_layer": setup.accent_layer,
        "accentuation_distance": float(a.distances.mean()), "total_seconds": total,
        **{k: {"optimized": float(v["optimized"].mean()), "whole": float(v["whole"].mean()),
               "natural": v["natural"], "seconds": v["seconds"]} for k, v in runs.items()},
    }, indent=2))
    print(f"wrote {figure} and {out_dir / 'results.json'}")
    if args.figures:
        Path(args.figures).mkdir(parents=True, exist_ok=True)
        copy = shutil.copy(figure, Path(args.figures) / setup.figure)
        print(f"copied the figure to {copy}")


if __name__ == "__main__":
    main()
