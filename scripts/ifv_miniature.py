"""The science of `inverse-feature-visualization` §3.4–3.6 in miniature on the bundled model.

On ``lightning_fv.models.bundled_model("photo_patches")`` (64×64 photo patches):

- A: layer ``block2.bn`` (64 channels, pre-ReLU), cosine power k = 2: angular distances of
  Grad-IFV predictions, feature responses and random objectives to the targets, α_j, SSIM
  after re-optimization for predicted / target / response / random objectives (Fig. 2a).
- B: the same with k = 0 (§3.6, dropping the cosine term).
- C: layer ``block2`` (the same channels after ReLU), k = 2: dead (all-zero) channels make
  trivial solutions; Algorithm 1 on the first realizations' Jacobians gives critical
  spaces, and the best one is evaluated on the rest (§3.5).

Writes ``docs/figures/ifv_*.png`` and ``docs/figures/ifv_results.json`` and prints a markdown
table. About 10–15 minutes on 2 CPU cores with the defaults.

    python scripts/ifv_miniature.py [--n-targets 16] [--steps 200] [--reopt-steps 64]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from lightning_fv.analysis.figures import ifv_figure
from lightning_fv.ifv import (
    angular_distance,
    critical_fraction,
    critical_spaces,
    grad_ifv,
    projected_target,
    run_ifv,
)
from lightning_fv.models import bundled_model
from lightning_fv.optvis.render import preset_settings
from lightning_fv.utils.images import save_grid


def stats(a: torch.Tensor) -> dict[str, float | None]:
    """Summary of angles in degrees; ``None`` for every entry when there are none."""
    a = a.double()
    if a.numel() == 0:
        return {"mean": None, "median": None, "p90": None, "frac_below_20": None}
    return {"mean": float(a.mean()), "median": float(a.median()),
            "p90": float(a.quantile(0.9)), "frac_below_20": float((a < 20).double().mean())}


def parser() -> argparse.ArgumentParser:
    """The command-line options (their defaults are the documented run's)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-targets", type=int, default=16)
    ap.add_argument("--n-canonical", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lbfgs-steps", type=int, default=100)
    ap.add_argument("--reopt-steps", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--out", default="docs/figures")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0,
                    help="seeds the targets, random objectives and realizations")
    ap.add_argument("--preset", default="lucent",
                    help="renderer of the realizations and re-optimizations: 'lucent' is §3.2's "
                         "plain Adam (no ReLU warm-up); 'lucid' adds 16 redirected-ReLU steps")
    ap.add_argument("--runs", default="ABC", help="which runs to (re)do; others are kept "
                    "from an existing ifv_results.json")
    return ap


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = bundled_model("photo_patches").eval()
    common = dict(n_canonical=args.n_canonical, steps=args.steps, lbfgs_steps=args.lbfgs_steps,
                  image_size=args.image_size,
                  redirect_relu_steps=preset_settings(args.preset)["redirect_relu_steps"])
    old = out / "ifv_results.json"
    results: dict[str, dict] = json.loads(old.read_text()) if old.is_file() else {}
    import matplotlib.pyplot as plt

    for name, layer, k, reopt in (("A", "block2.bn", 2.0, args.reopt_steps),
                                  ("B", "block2.bn", 0.0, args.reopt_steps),
                                  ("C", "block2", 2.0, 0)):
        if name not in args.runs:
            continue
        t0 = time.time()
        res = run_ifv(model, layer, args.n_targets, k=k, reopt_steps=reopt, seed=args.seed,
                      **common)
        entry: dict[str, object] = {
            "layer": layer, "k": k, "n": int(res.targets.shape[0]), "preset": args.preset,
            "angles": {kind: stats(res.angles[kind]) for kind in ("predicted", "response",
                                                                   "random")},
            "alpha_1_to_5": [round(float(a), 4) for a in res.alpha[:5]],
            "target_residual_median": float(res.target_residual.median()),
        }
        if res.ssim:
            entry["ssim_mean"] = {kind: float(v.mean()) for kind, v in res.ssim.items()}
            entry["unstable_fraction"] = {kind: float((v < 0.7).double().mean())
                                          for kind, v in res.ssim.items()}
        if name == "C":  # §3.5: Algorithm 1 on the first 8 Jacobians, evaluate on the rest
            fit, ev = slice(0, 8), slice(8, None)
            n_f = res.gram.shape[1]
            rows = []
            for cs in critical_spaces(grams=res.gram[fit]):
                if cs.dim in (n_f, 1):  # the full space is plain Grad-IFV; 1-D is trivial
                    continue
                pred = grad_ifv(res.responses[ev], gram=res.gram[ev], k=k, critical=cs.basis)
                tgt = projected_target(res.targets[ev], res.responses[ev], k, cs.basis)
                ang = angular_distance(pred, tgt)
                frac = critical_fraction(res.targets[ev], res.responses[ev], k, cs.basis)
                rows.append((cs, float(ang.median()), ang, float(frac.mean())))
            # the largest critical space whose predictions hit the projected targets within
            # 20° (median); otherwise the best one of at least half the dimensions
            good = [r for r in rows if r[1] < 20.0]
            pool = good or [r for r in rows if r[0].dim >= n_f // 2] or rows
            if pool:
                cs, med, ang, frac = (max(pool, key=lambda r: r[0].dim) if good
                                      else min(pool, key=lambda r: r[1]))
                entry["critical"] = {
                    "dim": cs.dim, "rho": cs.rho, "angles": stats(ang),
                    "critical_fraction_mean": frac,
                    "plain_angles_same_samples": stats(res.angles["predicted"][ev]),
                    "all": [{"dim": r[0].dim, "median_deg": r[1], "fraction": r[3]}
                            for r in rows],
                }
        entry["seconds"] = time.time() - t0
        results[name] = entry
        fig = ifv_figure(res, f"bundled photo_patches {layer}, k={k:g}")
        fig.savefig(out / f"ifv_{name}_{layer.replace('.', '_')}_k{int(k)}.png", dpi=110)
        plt.close(fig)
        if name == "A":
            save_grid(res.images, out / "ifv_realizations_block2_bn_k2.png", nrow=10)
            if res.reoptimized:
                save_grid(torch.cat([res.images[:10]] + [res.reoptimized[kd][:10] for kd in
                                                         ("predicted", "target", "response",
                                                          "random")]),
                          out / "ifv_reoptimized_block2_bn_k2.png", nrow=10)
        print(name, json.dumps(entry, indent=1), flush=True)
    (out / "ifv_results.json").write_text(json.dumps(results, indent=2))
    print("\n| run | layer | k | angle predicted (median) | angle response (median) | "
          "angle random (median) | α₁ | SSIM pred / target / response / random |")
    print("|---|---|---|---|---|---|---|---|")
    for name, e in sorted(results.items()):
        a = e["angles"]
        ss = e.get("ssim_mean")
        ss_s = " / ".join(f"{ss[kd]:.2f}" for kd in ("predicted", "target", "response",
                                                     "random")) if ss else "–"
        print(f"| {name} | {e['layer']} | {e['k']:g} | {a['predicted']['median']:.1f}° | "
              f"{a['response']['median']:.1f}° | {a['random']['median']:.1f}° | "
              f"{e['alpha_1_to_5'][0]:.2f} | {ss_s} |")


if __name__ == "__main__":
    main()
