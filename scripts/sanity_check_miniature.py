"""Sanity check in miniature (`dont-trust-your-eyes…` §3, Fig. 6/7, App. C.3, App. E) on
the bundled photo-patches model.

Class units ``fc:0 … fc:9`` are visualized ``--per-class`` times each with the render preset
``--preset`` (default ``"lucent"``, the paper's renderer, App. C.2: Fourier + decorrelated
sigmoid image, standard transforms, Adam lr 0.05, no ReLU redirection); natural images are
the photo-patches validation split. The check compares activations of every layer of the
network (conv / bn / relu of each block, the poolings, fc). The OOD variants (App. E) take
the bounds from an ImageNet-V2-like set — the same ten classes from the photos' validation
cells, zoomed in and colour-jittered (:func:`photo_patches_shifted`) — and, as a far shift
with other classes (like NINCO), from the digits set (upsampled to 64 px).

Writes ``docs/figures/sanity_spearman.png``, ``sanity_pearson.png``,
``sanity_cosine.png``, ``sanity_ood_shifted.png``, ``sanity_ood_digits.png``,
``sanity_visualizations.png`` and
``docs/figures/sanity_miniature.json`` (all numbers), and prints markdown tables.

Run: ``python scripts/sanity_check_miniature.py`` (a few minutes on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_fv.analysis import similarity_sanity_check
from lightning_fv.analysis.figures import sanity_check_figure
from lightning_fv.data import PHOTO_CLASSES, digits, photo_patches, photo_patches_shifted
from lightning_fv.models import bundled_model
from lightning_fv.optvis.render import render_units
from lightning_fv.utils import save_grid

LAYERS = [
    "block1.conv", "block1.bn", "block1", "pool1",
    "block2.conv", "block2.bn", "block2", "pool2",
    "block3.conv", "block3.bn", "block3", "pool3",
    "block4.conv", "block4.bn", "block4", "pool", "fc",
]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--per-class", type=int, default=4)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--n-val", type=int, default=40, help="natural images per class")
    ap.add_argument("--ood-digits", type=int, default=None,
                    help="validation digits of the OOD bounds (default: all 360)")
    ap.add_argument("--preset", default="lucent",
                    help="render preset: lucent (the paper's renderer) or lucid")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = bundled_model("photo_patches").eval()
    natural, labels = photo_patches("val", args.n_val, size=64)
    units = [f"fc:{c}" for c in range(10) for _ in range(args.per_class)]
    seeds = [k for _ in range(10) for k in range(args.per_class)]
    vis = render_units(model, units, seed=seeds, thresholds=(args.steps,), image_size=64,
                       batch_size=40, preset=args.preset).final
    vis_labels = torch.tensor([c for c in range(10) for _ in range(args.per_class)])
    save_grid(vis, out / "sanity_visualizations.png", nrow=args.per_class * 2)
    t_render = time.time() - t0

    results, numbers = {}, {}
    for metric in ("spearman", "pearson", "cosine"):
        strides = (1, 1, 1) if metric == "cosine" else (10, 100, 5)  # C.3: all pairs for cosine
        results[metric] = similarity_sanity_check(model, LAYERS, natural, labels, vis,
                                                  vis_labels, metric=metric, strides=strides)
    sx, sy = photo_patches_shifted(args.n_val, size=64)
    with torch.no_grad():
        shifted_acc = float((model(sx).argmax(1) == sy).float().mean())
    results["ood_shifted"] = similarity_sanity_check(model, LAYERS, natural, labels, vis,
                                                     vis_labels, ood_natural=sx, ood_labels=sy)
    ood_x, ood_y = digits("val", size=64)
    ood_x, ood_y = ood_x[:args.ood_digits], ood_y[:args.ood_digits]
    results["ood_digits"] = similarity_sanity_check(model, LAYERS, natural, labels, vis,
                                                    vis_labels, ood_natural=ood_x,
                                                    ood_labels=ood_y)
    for name, res in results.items():
        title = {"ood_digits": "OOD bounds from digits (App. E), spearman",
                 "ood_shifted": "OOD bounds from shifted photo patches (App. E), spearman",
                 }.get(name, f"bundled photo-patches model, {res.metric}")
        fig = sanity_check_figure(res, title=title)
        fig.savefig(out / f"sanity_{name}.png", dpi=100)
        numbers[name] = {
            "metric": res.metric, "score": res.score, "passes": res.passes,
            "layers": res.layers, "upper": res.upper.tolist(), "lower": res.lower.tolist(),
            "fv": res.fv.tolist(), "normalized": res.normalized.tolist(),
            "smoothed": res.smoothed.tolist(), "included": res.included.tolist(),
            "pairs": {k: v.tolist() for k, v in res.counts.items()},
            "n_natural": res.n_natural, "n_excluded": res.n_excluded,
            "n_visualizations": res.n_visualizations,
        }
        print(f"\n### {name} (score {res.score:.3f}, "
              f"{'passes' if res.passes else 'fails'})\n")
        print(res.table())
    numbers["meta"] = {"classes": list(PHOTO_CLASSES), "steps": args.steps,
                       "per_class": args.per_class, "n_val_per_class": args.n_val,
                       "preset": args.preset, "shifted_ood_accuracy": shifted_acc,
                       "render_seconds": t_render, "total_seconds": time.time() - t0}
    (out / "sanity_miniature.json").write_text(json.dumps(numbers, indent=1))
    print(f"\nwrote {out}/sanity_*.png and sanity_miniature.json in {time.time() - t0:.0f} s")
    return numbers


if __name__ == "__main__":
    main()
