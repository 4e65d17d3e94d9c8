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

Options for sweeps (issue 17): ``--checkpoint`` runs the check on another SmallCNN saved by
``scripts/train_bundled.py`` (e.g. a wider one, ``--widths``); ``--checks`` picks which of
the five checks run (default all); ``--snapshots 128`` also checks the renders at the given
earlier step counts of the same optimization, and ``--subsets 3`` the first 3 renders of
every class (Spearman, in-distribution bounds; every combination of snapshot and subset).
For every set of renders the JSON also records how class-typical they are to the model:
the softmax probability of the visualized class and the fraction the model classifies as
that class (``confidence``).
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
from lightning_fv.models import bundled_model, load_small_cnn
from lightning_fv.optvis.render import render_units
from lightning_fv.utils import save_grid

LAYERS = [
    "block1.conv", "block1.bn", "block1", "pool1",
    "block2.conv", "block2.bn", "block2", "pool2",
    "block3.conv", "block3.bn", "block3", "pool3",
    "block4.conv", "block4.bn", "block4", "pool", "fc",
]
CHECKS = ("spearman", "pearson", "cosine", "ood_shifted", "ood_digits")


def _int_list(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


@torch.no_grad()
def class_confidence(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor
                     ) -> dict[str, object]:
    """How class-typical ``images`` are to ``model``: the softmax probability of the class
    in ``labels`` (mean, median, min; mean per class), the fraction classified as that class
    (overall, per class), the mean logit of that class and every image's top-1 class."""
    logits = torch.cat([model(images[s:s + 64]) for s in range(0, len(images), 64)])
    idx = torch.arange(len(labels))
    p = logits.softmax(1)[idx, labels]
    hit = (logits.argmax(1) == labels).float()
    classes = labels.unique().tolist()
    return {"mean_p_class": float(p.mean()), "median_p_class": float(p.median()),
            "min_p_class": float(p.min()), "top1_is_class": float(hit.mean()),
            "mean_class_logit": float(logits[idx, labels].mean()),
            "per_class_mean_p": {c: float(p[labels == c].mean()) for c in classes},
            "per_class_top1": {c: float(hit[labels == c].mean()) for c in classes},
            "predicted": logits.argmax(1).tolist()}


def _numbers(res) -> dict:
    return {
        "metric": res.metric, "score": res.score, "passes": res.passes,
        "layers": res.layers, "upper": res.upper.tolist(), "lower": res.lower.tolist(),
        "fv": res.fv.tolist(), "normalized": res.normalized.tolist(),
        "smoothed": res.smoothed.tolist(), "included": res.included.tolist(),
        "pairs": {k: v.tolist() for k, v in res.counts.items()},
        "n_natural": res.n_natural, "n_excluded": res.n_excluded,
        "n_visualizations": res.n_visualizations,
    }


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
    ap.add_argument("--checkpoint", default=None,
                    help="a SmallCNN file written by scripts/train_bundled.py (default: the "
                         "bundled photo-patches model)")
    ap.add_argument("--checks", default=",".join(CHECKS),
                    help=f"comma-separated checks to run (default all: {','.join(CHECKS)})")
    ap.add_argument("--snapshots", default="",
                    help="comma-separated earlier step counts at which the same renders are "
                         "also checked (Spearman; counts >= --steps are skipped)")
    ap.add_argument("--subsets", default="",
                    help="comma-separated numbers k: also check the first k renders of "
                         "every class (Spearman; k >= --per-class is skipped)")
    ap.add_argument("--save-renders", action="store_true",
                    help="also write the renders (every snapshot) to sanity_renders.pt")
    args = ap.parse_args(argv)
    checks = [c for c in args.checks.split(",") if c]
    unknown = sorted(set(checks) - set(CHECKS))
    if unknown:
        ap.error(f"unknown checks {unknown}; valid: {list(CHECKS)}")
    snapshots = sorted(set(_int_list(args.snapshots)))
    subsets = sorted(set(_int_list(args.subsets)))
    if any(t < 0 for t in snapshots) or any(k < 1 for k in subsets):
        ap.error(f"--snapshots must be >= 0 and --subsets >= 1, got {snapshots}, {subsets}")
    # a shrunk run (fewer --steps / --per-class) skips what it no longer has
    skipped = [t for t in snapshots if t >= args.steps] + [k for k in subsets
                                                            if k >= args.per_class]
    if skipped:
        print(f"skipping snapshots >= --steps and subsets >= --per-class: {skipped}")
    snapshots = [t for t in snapshots if t < args.steps]
    subsets = [k for k in subsets if k < args.per_class]
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    model = (load_small_cnn(args.checkpoint) if args.checkpoint
             else bundled_model("photo_patches")).eval()
    model_name = Path(args.checkpoint).stem if args.checkpoint else "bundled photo-patches model"
    natural, labels = photo_patches("val", args.n_val, size=64)
    units = [f"fc:{c}" for c in range(10) for _ in range(args.per_class)]
    seeds = [k for _ in range(10) for k in range(args.per_class)]
    rendered = render_units(model, units, seed=seeds, thresholds=(*snapshots, args.steps),
                            image_size=64, batch_size=40, preset=args.preset)
    vis = rendered.final
    vis_labels = torch.tensor([c for c in range(10) for _ in range(args.per_class)])
    save_grid(vis, out / "sanity_visualizations.png", nrow=args.per_class * 2)
    if args.save_renders:
        torch.save({"images": rendered.images, "labels": vis_labels, "seeds": seeds,
                    "units": units}, out / "sanity_renders.pt")
    t_render = time.time() - t0

    results, numbers = {}, {}
    variants = {}
    for steps in (*snapshots, args.steps):
        for k in (*subsets, args.per_class):
            if (steps, k) == (args.steps, args.per_class):
                continue  # the main checks below
            pick = torch.tensor([s < k for s in seeds])  # the first k renders of a class
            images, lab = rendered.images[steps][pick], vis_labels[pick]
            t1 = time.time()
            res = similarity_sanity_check(model, LAYERS, natural, labels, images, lab)
            variants[f"{steps}_steps_{k}_per_class"] = {
                "steps": steps, "per_class": k, "confidence": class_confidence(model, images, lab),
                "seconds": time.time() - t1, **_numbers(res)}
            print(f"\n### {steps} steps, {k} per class: Spearman score {res.score:.3f}\n")
            print(res.table())
    for metric in ("spearman", "pearson", "cosine"):
        if metric not in checks:
            continue
        strides = (1, 1, 1) if metric == "cosine" else (10, 100, 5)  # C.3: all pairs for cosine
        results[metric] = similarity_sanity_check(model, LAYERS, natural, labels, vis,
                                                  vis_labels, metric=metric, strides=strides)
    sx, sy = photo_patches_shifted(args.n_val, size=64)
    with torch.no_grad():
        shifted_acc = float((model(sx).argmax(1) == sy).float().mean())
    if "ood_shifted" in checks:
        results["ood_shifted"] = similarity_sanity_check(
            model, LAYERS, natural, labels, vis, vis_labels, ood_natural=sx, ood_labels=sy)
    if "ood_digits" in checks:
        ood_x, ood_y = digits("val", size=64)
        ood_x, ood_y = ood_x[:args.ood_digits], ood_y[:args.ood_digits]
        results["ood_digits"] = similarity_sanity_check(
            model, LAYERS, natural, labels, vis, vis_labels, ood_natural=ood_x,
            ood_labels=ood_y)
    for name, res in results.items():
        title = {"ood_digits": "OOD bounds from digits (App. E), spearman",
                 "ood_shifted": "OOD bounds from shifted photo patches (App. E), spearman",
                 }.get(name, f"{model_name}, {res.metric}")
        fig = sanity_check_figure(res, title=title)
        fig.savefig(out / f"sanity_{name}.png", dpi=100)
        numbers[name] = _numbers(res)
        print(f"\n### {name} (score {res.score:.3f}, "
              f"{'passes' if res.passes else 'fails'})\n")
        print(res.table())
    if variants:
        numbers["variants"] = variants
    with torch.no_grad():
        natural_acc = float((model(natural).argmax(1) == labels).float().mean())
    numbers["meta"] = {"classes": list(PHOTO_CLASSES), "steps": args.steps,
                       "per_class": args.per_class, "n_val_per_class": args.n_val,
                       "preset": args.preset, "shifted_ood_accuracy": shifted_acc,
                       "natural_accuracy": natural_acc,
                       "checkpoint": args.checkpoint or "bundled:photo_patches",
                       "widths": list(getattr(model, "widths", ())),
                       "checks": checks, "snapshots": snapshots, "subsets": subsets,
                       "confidence": class_confidence(model, vis, vis_labels),
                       "natural_confidence": class_confidence(model, natural, labels),
                       "threads": torch.get_num_threads(),
                       "render_seconds": t_render, "total_seconds": time.time() - t0}
    (out / "sanity_miniature.json").write_text(json.dumps(numbers, indent=1))
    print(f"\nwrote {out}/sanity_*.png and sanity_miniature.json in {time.time() - t0:.0f} s")
    return numbers


if __name__ == "__main__":
    main()
