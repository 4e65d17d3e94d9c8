"""Miniature reproduction of `dont-trust-your-eyes…` §2 on the bundled photo-patches CNN.

1. Visualization detector (App. C.1, Table 3) trained on photo patches vs. log-sampled
   visualization trajectories of some units; accuracy on held-out units, and on
   visualizations of a second model it never saw (the bundled digits CNN).
2. Fooling circuit (§2.1, Fig. 2/4): permute the visualizations of the last layer; validation
   accuracy before/after; does the original model respond maximally at the target unit D
   to the deceptive unit's visualization?; embedded images (App. C.2, Fig. 1).
3. Silent units (§2.2, Fig. 5): make a layer's visualizations near-identical; mean pairwise
   texture and pixel similarity before/after (and of one unit rendered from 12 seeds, the
   ceiling); validation accuracy with the max and the 99th-percentile bias.

Writes docs/figures/manip_*.png and outputs/manipulation/results.json and prints a markdown
table. CPU, about 10 minutes on 2 cores::

    python scripts/manipulation_miniature.py [--steps 48] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch

from lightning_fv.data import digits, photo_patches
from lightning_fv.data.embedded import load_photos
from lightning_fv.data.trajectories import TrajectoryDataModule, render_trajectories
from lightning_fv.manipulation import (
    embed_images,
    image_correlation,
    layer_response,
    pairwise_similarity,
    pattern_from_image,
    permute_layer,
    shifted_permutation,
    silence_block,
    target_hit_rate,
    texture_similarity,
)
from lightning_fv.manipulation.fooling import check_k
from lightning_fv.manipulation.silent import conv_inputs, natural_change, silent_modules
from lightning_fv.models import bundled_model
from lightning_fv.modules.detector import VisualizationDetector, save_detector
from lightning_fv.optvis.render import render_units
from lightning_fv.utils import save_grid

#: pixel standard deviation below which a render has not left its near-grey start image
STUCK_STD = 0.01


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


@torch.no_grad()
def detector_acc(det: torch.nn.Module, x: torch.Tensor, label: int) -> float:
    det.eval()
    logits = torch.cat([det.resized(x[i:i + 512]) for i in range(0, len(x), 512)])
    return float(((logits > 0).long() == label).float().mean())


def parser() -> argparse.ArgumentParser:
    """The command-line options (their defaults are the documented run's)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=64, help="optimizer steps per visualization")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--fc-steps", type=int, default=None,
                    help="steps for last-layer renders (default: --steps, as the detector saw)")
    ap.add_argument("--epochs", type=int, default=30,
                    help="detector epochs (C.1: 8 epochs of 1.7M images; ours has ~1.5k)")
    ap.add_argument("--silent-steps", type=int, default=512,
                    help="steps of the silent-unit renders (C.2: 512)")
    ap.add_argument("--silent-lambda", type=float, default=10.0,
                    help="λ = β/α of Θ̄ = α(Θ + λΔΘ⊥) (the authors' notebook: 3)")
    ap.add_argument("--trajectories", type=int, default=2,
                    help="trajectories per unit in the detector data sets (C.1)")
    ap.add_argument("--parts", default="photo,silent,digits",
                    help="comma-separated: photo (detector, fooling, embedded), silent, digits")
    ap.add_argument("--digits-steps", type=int, default=256,
                    help="steps of the digits detector trajectories and logit renders")
    ap.add_argument("--preset", default="lucent",
                    help="renderer of the compared visualizations (§2, App. C.2: the paper's "
                         "Lucent 0.1.8, no ReLU redirection); the detector's trajectories keep "
                         "C.1's Olah et al. (2017) renderer, 'lucid'")
    ap.add_argument("--out", default="outputs/manipulation")
    ap.add_argument("--figures", default="docs/figures")
    ap.add_argument("--cache", default="outputs/cache/trajectories")
    return ap


def main() -> None:
    args = parser().parse_args()
    torch.manual_seed(0)
    t0 = time.time()
    out, figs = Path(args.out), Path(args.figures)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, object] = {"steps": args.steps, "image_size": args.size,
                              "preset": args.preset, "detector_trajectory_preset": "lucid"}
    size, steps = args.size, args.steps
    render_kw = dict(thresholds=(steps,), image_size=size, batch_size=32, preset=args.preset)

    model = bundled_model("photo_patches").eval()
    xv, yv = photo_patches("val", 30, size)
    acc0 = accuracy(model, xv, yv)
    res["val_acc_original"] = acc0

    parts = set(args.parts.split(","))
    if "photo" in parts:
        # 1. detector ---------------------------------------------------------------------
        units = ([f"fc:{i}" for i in range(10)] + [f"block4:{i}" for i in range(32)]
                 + [f"block3:{i}" for i in range(16)])
        dm = TrajectoryDataModule(model, units=units, n_natural_per_class=100, image_size=size,
                                  trajectories_per_unit=args.trajectories, steps=steps,
                                  test_fraction=0.25,
                                  augment_fraction=0.5, cache_dir=args.cache, batch_size=32,
                                  device="cpu")
        dm.setup()
        print(f"[{time.time() - t0:.0f}s] detector data: {len(dm.train_set)} train, "
              f"{len(dm.test_set)} test; {len(dm.train_units)} train units, "
              f"{len(dm.test_units)} held-out units; cache {dm.cache_path} "
              f"({'hit' if dm.loaded_from_cache else 'written'})")
        assert not set(dm.train_units) & set(dm.test_units)
        L.seed_everything(0, verbose=False)
        det_module = VisualizationDetector(image_size=size, max_epochs=args.epochs)
        trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, num_sanity_val_steps=0)
        trainer.fit(det_module, dm)
        det = det_module.net.eval()
        save_detector(det, out / "detector.safetensors")
        res["detector"] = {
            "train_units": len(dm.train_units), "test_units": len(dm.test_units),
            "n_train": len(dm.train_set), "n_test": len(dm.test_set),
            "test_natural": detector_acc(det, dm.natural_test, 1),
            "test_vis_heldout_units": detector_acc(det, dm.vis_test, 0),
        }
        n_nat, n_vis = len(dm.natural_test), len(dm.vis_test)
        d = res["detector"]
        d["test_overall"] = (d["test_natural"] * n_nat + d["test_vis_heldout_units"] * n_vis) / (
            n_nat + n_vis)
        # Fig. 3 analogue: natural patches and one trajectory (15 log-spaced steps)
        save_grid(torch.cat([dm.natural_test[::50][:5], dm.vis_test[:15:3]]),
                  figs / "manip_detector_examples.png", nrow=5)

        # second model, never seen: the bundled digits CNN rendered at the same size
        digits_model = bundled_model("digits").eval()
        other = render_trajectories(digits_model, [f"fc:{i}" for i in range(10)]
                                    + [f"block4:{i}" for i in range(10)], 1, steps, 15, size,
                                    batch_size=32)
        d["second_model_vis"] = detector_acc(det, other, 0)
        print(f"[{time.time() - t0:.0f}s] detector: {json.dumps(d)}")

        # 2. fooling circuit: permute the last layer (Fig. 2) ------------------------------
        perm = shifted_permutation(10, 3)
        fooled = permute_layer(model, "fc", det, permutation=perm, k=1e4, mode="split")
        acc1 = accuracy(fooled, xv, yv)
        fc_units = [f"fc:{i}" for i in range(10)]
        fc_kw = {**render_kw, "thresholds": (args.fc_steps or steps,)}
        before = render_units(model, fc_units, **fc_kw)
        after = render_units(fooled, fc_units, **fc_kw)
        resp = layer_response(model, "fc", after.final)
        hit, _ = target_hit_rate(resp, perm)
        resp0 = layer_response(model, "fc", before.final)
        hit0, arg0 = target_hit_rate(resp0, list(range(10)))
        good = [c for c in range(10) if int(arg0[perm[c]]) == perm[c]]  # D's own vis hits D
        hit_good = target_hit_rate(resp[good], [perm[c] for c in good])[0] if good else float("nan")
        # the same, with each logit standardized by its mean and std over natural images (logits
        # have different offsets and scales, so raw argmax favours some classes)
        nat = layer_response(model, "fc", photo_patches("train", 30, size)[0])
        mu, sd = nat.mean(0), nat.std(0)
        hit_z, _ = target_hit_rate(resp - mu, perm, scale=sd)
        hit0_z, _ = target_hit_rate(resp0 - mu, list(range(10)), scale=sd)
        same = float((after.final - before.final[perm]).abs().max())
        report = check_k(fooled, xv, after.final)
        res["fooling_permutation"] = {
            "val_acc_before": acc0, "val_acc_after": acc1, "delta_pp": 100 * (acc1 - acc0),
            "hit_rate_target_D": hit, "hit_rate_original_units": hit0,
            "hit_rate_target_D_standardized": hit_z,
            "hit_rate_original_units_standardized": hit0_z,
            "hit_rate_where_D_vis_hits_D": hit_good, "n_where_D_vis_hits_D": len(good),
            "max_abs_diff_to_original_vis_of_D": same,
            "gate_vis_fraction_final_images": detector_acc(det, after.final, 0),
            "k_ok": report.ok, "max_suppressed": report.max_suppressed["fc"],
        }
        save_grid(torch.cat([before.final, after.final]), figs / "manip_fooling_permutation.png",
                  nrow=10)
        print(f"[{time.time() - t0:.0f}s] fooling: {json.dumps(res['fooling_permutation'])}")

        # embedded images (App. C.2): four units of block4 visualize as photos
        photos = load_photos(size)
        targets = torch.stack([p[:, :size, :size] for p in photos[:4]])  # (4, 3, size, size)
        emb_units = [0, 1, 2, 3]
        embedded = embed_images(model, "block4", det, targets, channels=emb_units, k=1e4)
        acc2 = accuracy(embedded, xv, yv)
        names = [f"block4:{u}" for u in emb_units]
        emb_before = render_units(model, names, **render_kw).final
        emb_after = render_units(embedded, names, **render_kw).final
        corr_after = image_correlation(emb_after, targets)
        corr_before = image_correlation(emb_before, targets)
        res["fooling_embedded"] = {
            "val_acc_after": acc2, "delta_pp": 100 * (acc2 - acc0),
            "corr_with_image_after": corr_after.tolist(),
            "corr_with_image_before": corr_before.tolist(),
            "mean_corr_after": float(corr_after.mean()),
            "mean_corr_before": float(corr_before.mean()),
        }
        save_grid(torch.cat([emb_before, targets, emb_after]), figs / "manip_embedded.png", nrow=4)
        print(f"[{time.time() - t0:.0f}s] embedded: {json.dumps(res['fooling_embedded'])}")

    if "silent" in parts:
        # 3. silent units (Fig. 5) ----------------------------------------------------------
        # As in the authors' notebook: the target image is a long visualization of unit 0 of the
        # layer, the shared pattern ΔΘ is the filter that image activates most (mean patch of
        # its conv-input features), Θ̄ = α(Θ + λΔΘ⊥) with a large scale α; units 1..n are
        # rendered before and after with C.2's 512 steps.
        layer, n_units, sil_steps = "block4", 12, args.silent_steps
        sil_kw = {**render_kw, "thresholds": (sil_steps,)}
        xn, _ = photo_patches("train", 100, size)
        # the notebook's lucent fork renders the target with a 16-step ReLU warm-up: "lucid"
        target = render_units(model, [f"{layer}:0"], thresholds=(512,), image_size=size,
                              preset="lucid").final
        pattern = pattern_from_image(model, f"{layer}.conv", target[0])
        sil_units = [f"{layer}:{i}" for i in range(1, n_units + 1)]
        sil_before = render_units(model, sil_units, **sil_kw).final
        # without a ReLU warm-up ("lucent") a unit closed everywhere on the near-grey start
        # never moves (pixel std stays ≈ the start's); such a unit cannot be the ceiling
        moved = sil_before.flatten(1).std(1) > STUCK_STD
        ceil_unit = sil_units[int(moved.nonzero()[0])] if bool(moved.any()) else sil_units[0]
        ceiling = render_units(model, [ceil_unit] * n_units, seed=list(range(n_units)),
                               **sil_kw).final
        silent = silence_block(model, layer, xn, pattern=pattern, alpha=100.0,
                               beta=100.0 * args.silent_lambda)
        with torch.no_grad():
            exact = bool(torch.equal(silent(xn), model(xn)))
        sil_after = render_units(silent, sil_units, **sil_kw).final
        mod = silent_modules(silent)[f"{layer}.conv"]
        x_after = conv_inputs(silent, f"{layer}.conv", sil_after)[0]
        idx = torch.arange(n_units)
        on = torch.relu(mod.delta(x_after)).flatten(2).amax(2)[idx, idx + 1] > 0
        tex = {k: float(texture_similarity(model, v, xn)) for k, v in
               (("before", sil_before), ("after", sil_after), ("same_unit_12_seeds", ceiling))}
        tex["after_switched_on_units"] = (float(texture_similarity(model, sil_after[on], xn))
                                          if int(on.sum()) >= 2 else float("nan"))
        tex["before_moved_units"] = (float(texture_similarity(model, sil_before[moved], xn))
                                     if int(moved.sum()) >= 2 else float("nan"))
        moved_after = sil_after.flatten(1).std(1) > STUCK_STD
        silent_res: dict[str, object] = {
            "layer": layer, "units": sil_units, "steps": sil_steps, "lambda": args.silent_lambda,
            "preset": args.preset, "ceiling_unit": ceil_unit,
            "stuck_at_start_before": [u for u, m in zip(sil_units, moved.tolist()) if not m],
            "stuck_at_start_after": [u for u, m in zip(sil_units, moved_after.tolist())
                                     if not m],
            "alpha": 100.0, "switched_on": int(on.sum()),
            "texture_similarity": tex,
            "pixel_similarity": {"before": float(pairwise_similarity(sil_before)),
                                 "after": float(pairwise_similarity(sil_after)),
                                 "same_unit_12_seeds": float(pairwise_similarity(ceiling))},
            "natural_outputs_bit_identical": exact,
            "val_acc_before": acc0, "val_acc_after": accuracy(silent, xv, yv),
            "val_change": natural_change(silent, xv),
        }
        pct = silence_block(model, layer, xn, pattern=pattern, alpha=100.0,
                            beta=100.0 * args.silent_lambda, bias="percentile", percentile=99.0)
        silent_res["percentile99"] = {"val_acc_after": accuracy(pct, xv, yv),
                                      "train_change": natural_change(pct, xn),
                                      "val_change": natural_change(pct, xv)}
        res["silent"] = silent_res
        save_grid(torch.cat([sil_before, sil_after]), figs / "manip_silent.png", nrow=n_units)
        print(f"[{time.time() - t0:.0f}s] silent: {json.dumps(silent_res)}")
    if "digits" in parts:
        # 4. fooling circuit on the bundled digits CNN (32 px): its logit visualizations peak at
        # their own logit far more often than the photo model's, so the ≥90 % target-hit goal
        # is not capped by the visualizations themselves. Its own detector (natural = digits).
        dsize, dsteps = 32, args.digits_steps
        dmodel = bundled_model("digits").eval()
        dxv, dyv = digits("val", size=dsize)
        dacc0 = accuracy(dmodel, dxv, dyv)
        dunits = ([f"fc:{i}" for i in range(10)] + [f"block4:{i}" for i in range(32)]
                  + [f"block3:{i}" for i in range(16)])
        ddm = TrajectoryDataModule(dmodel, units=dunits, natural="digits", n_natural_per_class=100,
                                   image_size=dsize, trajectories_per_unit=args.trajectories,
                                   steps=dsteps,
                                   test_fraction=0.25, augment_fraction=0.5, cache_dir=args.cache,
                                   batch_size=32, device="cpu")
        ddm.setup()
        L.seed_everything(0, verbose=False)
        ddet_module = VisualizationDetector(image_size=dsize, max_epochs=args.epochs)
        L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False,
                  enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, num_sanity_val_steps=0).fit(ddet_module, ddm)
        ddet = ddet_module.net.eval()
        save_detector(ddet, out / "detector_digits.safetensors")
        dres: dict[str, object] = {
            "image_size": dsize, "steps": dsteps,
            "detector_test_natural": detector_acc(ddet, ddm.natural_test, 1),
            "detector_test_vis_heldout_units": detector_acc(ddet, ddm.vis_test, 0),
        }
        dperm = shifted_permutation(10, 3)
        dfooled = permute_layer(dmodel, "fc", ddet, permutation=dperm, k=1e4, mode="split")
        dkw = dict(thresholds=(dsteps,), image_size=dsize, batch_size=32, preset=args.preset)
        dfc = [f"fc:{i}" for i in range(10)]
        dbefore = render_units(dmodel, dfc, **dkw).final
        dafter = render_units(dfooled, dfc, **dkw).final
        dhit, _ = target_hit_rate(layer_response(dmodel, "fc", dafter), dperm)
        dhit0, _ = target_hit_rate(layer_response(dmodel, "fc", dbefore), list(range(10)))
        dacc1 = accuracy(dfooled, dxv, dyv)
        dres.update({
            "val_acc_before": dacc0, "val_acc_after": dacc1, "delta_pp": 100 * (dacc1 - dacc0),
            "hit_rate_target_D": dhit, "hit_rate_original_units": dhit0,
            "gate_vis_fraction_final_images": detector_acc(ddet, dafter, 0),
            "k_ok": check_k(dfooled, dxv, dafter).ok,
        })
        res["fooling_digits"] = dres
        save_grid(torch.cat([dbefore, dafter]), figs / "manip_fooling_digits.png", nrow=10)
        print(f"[{time.time() - t0:.0f}s] digits fooling: {json.dumps(dres)}")
    res["seconds"] = time.time() - t0
    name = "results.json" if parts == {"photo", "silent", "digits"} else (
        f"results_{'_'.join(sorted(parts))}.json")
    (out / name).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
