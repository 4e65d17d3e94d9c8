"""Robust vs. standard representations in miniature (`robust-representations…` §3–§5).

Trains a standard and an ℓ2-PGD adversarially trained SmallCNN (64-d globally pooled
representation) on the CPU with :class:`RobustClassifier`, on one of the embedded data sets
(``--dataset digits``: sklearn's handwritten digits at 32×32; ``--dataset photos``: the
64×64 photo patches, 10 photos as classes), then reports:

- clean and robust accuracy of both (a stronger 20-step PGD attack than in training);
- representation inversion from Gaussian noise (Eq. 5, one validation image per class):
  SSIM and pixel RMSE to the target, pixel RMSE after a Gaussian low-pass of both
  (σ = size/16 px, a secondary metric that ignores pixel-level speckle), and the final
  relative representation distance
  ``‖R(x) − R(x_targ)‖ / ‖R(x_targ)‖`` (does the optimization converge?). The step size
  decays geometrically over ``--inv-chunks`` chunks, from ``--inv-step`` to
  ``--inv-step × --inv-decay``;
- class visualizations (maximizing the class logit from a grey/noise seed with the engine's
  norm-constrained maximization, §4.1): how often the model predicts that class on its
  own visualization, and SSIM to the class mean image;
- feature accentuation (Eq. 7–8) and interpolation (Eq. 6) figures of the robust model.

Writes ``docs/figures/robust_*.png`` and ``docs/robust_results.json`` (photos) or
``docs/figures/robust_digits_*.png`` and ``docs/robust_results_digits.json`` (digits);
``--quick`` writes under ``outputs/robust/quick/`` instead.

    python scripts/train_robust.py --dataset digits   # ~4 min on 1 CPU core
    python scripts/train_robust.py --dataset photos   # ~25 min on 2 CPU cores
    python scripts/train_robust.py --quick            # a smoke run (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.adversarial import (
    PGDConfig,
    accentuate,
    interpolate,
    invert_scheduled,
    noise_seed,
    robust_accuracy,
)
from lightning_fv.data import PHOTO_CLASSES, digits, photo_patches
from lightning_fv.ifv.evaluation import ssim as ifv_ssim
from lightning_fv.models import SmallCNN, save_small_cnn
from lightning_fv.modules.robust_classifier import RobustClassifier
from lightning_fv.optvis import maximize_in_ball, preserved_state
from lightning_fv.optvis.objectives import gaussian_blur
from lightning_fv.utils import save_grid

ROOT = Path(__file__).resolve().parents[1]

# Per-data-set defaults; every value can be overridden on the command line.
PRESETS: dict[str, dict[str, object]] = {
    "photos": dict(size=64, epochs=12, n_train=120, n_val=30, eps=2.0, train_steps=5,
                   warmup=60, batch=50, lr=0.05, inv_steps=400, inv_step=0.1,
                   inv_decay=1.0, inv_chunks=1, vis_steps=200, vis_step=0.1, vis_eps=20.0),
    "digits": dict(size=32, epochs=20, n_train=0, n_val=0, eps=3.0, train_steps=5,
                   warmup=100, batch=64, lr=0.05, inv_steps=4000, inv_step=0.1,
                   inv_decay=0.1, inv_chunks=10, vis_steps=200, vis_step=0.05,
                   vis_eps=10.0),
}


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of ``(N, 3, H, W)`` image pairs in [0, 1] (the library's torchmetrics SSIM,
    as in the IFV evaluation)."""
    return float(ifv_ssim(a.detach().float().cpu(), b.detach().float().cpu()).mean())


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def lowpass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur (σ in pixels, reflect padding) of ``(N, C, H, W)`` images."""
    return gaussian_blur(x, sigma, padding="reflect")


def save_figure(images: torch.Tensor, path: Path, nrow: int) -> None:
    """:func:`save_grid`, small images enlarged (nearest neighbour) to at least 64 px."""
    k = max(1, 64 // images.shape[-1])
    save_grid(torch.nn.functional.interpolate(images, scale_factor=k, mode="nearest")
              if k > 1 else images, path, nrow=nrow)


def load_data(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_val, y_val)``; ``n_train``/``n_val`` > 0 subsample digits."""
    if args.dataset == "photos":
        xtr, ytr = photo_patches("train", args.n_train, args.size)
        xva, yva = photo_patches("val", args.n_val, args.size)
        return xtr, ytr, xva, yva
    xtr, ytr = digits("train", size=args.size)
    xva, yva = digits("val", size=args.size)
    if args.n_train > 0:
        xtr, ytr = xtr[: 10 * args.n_train], ytr[: 10 * args.n_train]
    if args.n_val > 0:
        xva, yva = xva[: 10 * args.n_val], yva[: 10 * args.n_val]
    return xtr, ytr, xva, yva


def train(robust: bool, data: tuple, args: argparse.Namespace) -> nn.Module:
    xtr, ytr, xva, yva = data
    L.seed_everything(0, verbose=False)
    net = SmallCNN(num_classes=10, widths=tuple(args.widths))
    module = RobustClassifier(
        net, num_classes=10, norm="l2", eps=args.eps, steps=args.train_steps,
        adversarial=robust, val_attack=False, eps_warmup_steps=args.warmup if robust else 0,
        train_clean_acc=False, lr=args.lr,
    )
    g = torch.Generator().manual_seed(0)
    tl = DataLoader(TensorDataset(xtr, ytr), batch_size=args.batch, shuffle=True, generator=g)
    vl = DataLoader(TensorDataset(xva, yva), batch_size=256)
    trainer = L.Trainer(accelerator="cpu", max_epochs=args.epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        check_val_every_n_epoch=args.epochs)
    t0 = time.time()
    trainer.fit(module, tl, vl)
    print(f"{'robust' if robust else 'standard'} training: {time.time() - t0:.0f} s", flush=True)
    return module.model.backbone.eval()


def scheduled_inversion(model: nn.Module, targets: torch.Tensor, seed: torch.Tensor,
                        args: argparse.Namespace) -> tuple[torch.Tensor, list[float]]:
    """Eq. 5 from ``seed`` with the script's step schedule (:func:`invert_scheduled`)."""
    return invert_scheduled(model, targets, seed, steps=args.inv_steps,
                            step_size=args.inv_step, decay=args.inv_decay,
                            chunks=args.inv_chunks)


def class_visualizations(model: nn.Module, seeds: torch.Tensor, args: argparse.Namespace,
                         ) -> torch.Tensor:
    """Maximize each class logit from ``seeds`` ``(S, 3, H, W)``: ``(10, S, 3, H, W)``."""
    out = []
    with preserved_state(model):
        for c in range(10):
            fn = lambda x, c=c: model(x)[:, c]  # noqa: E731
            out.append(maximize_in_ball(fn, seeds, args.vis_eps, args.vis_step,
                                        args.vis_steps, "l2"))
    return torch.stack(out)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(PRESETS), default="digits")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--size", type=int, help="image side (photos 64, digits 32)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--n-train", type=int,
                    help="training images per class (digits: 0 = all 1437)")
    ap.add_argument("--n-val", type=int, help="validation images per class (digits: 0 = all 360)")
    ap.add_argument("--widths", type=int, nargs=4, default=[16, 32, 48, 64])
    ap.add_argument("--eps", type=float, help="ℓ2 radius, [0,1] pixel units")
    ap.add_argument("--train-steps", type=int)
    ap.add_argument("--warmup", type=int, help="ε warm-up (optimizer steps)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--inv-steps", type=int)
    ap.add_argument("--inv-step", type=float, help="initial inversion step size")
    ap.add_argument("--inv-decay", type=float, help="final / initial inversion step size")
    ap.add_argument("--inv-chunks", type=int, help="constant-step chunks of the schedule")
    ap.add_argument("--vis-steps", type=int)
    ap.add_argument("--vis-step", type=float)
    ap.add_argument("--vis-eps", type=float)
    ap.add_argument("--out", help="results folder (default docs/, with --quick "
                    "outputs/robust/quick/)")
    args = ap.parse_args()
    for key, value in PRESETS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.epochs, args.n_train, args.n_val = 1, 10, 4
        args.inv_steps = args.vis_steps = args.eval_steps = 3
    if args.out is None:
        args.out = str(ROOT / ("outputs/robust/quick" if args.quick else "docs"))
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    tag = "" if args.dataset == "photos" else f"{args.dataset}_"
    t_start = time.time()
    size = args.size

    data = load_data(args)
    xtr, ytr, xva, yva = data
    print(f"{args.dataset}: {len(ytr)} training / {len(yva)} validation images of {size} px",
          flush=True)
    models = {"standard": train(False, data, args), "robust": train(True, data, args)}
    ckpt = ROOT / "outputs" / "robust" / ("quick" if args.quick else "")
    ckpt.mkdir(parents=True, exist_ok=True)
    for name, m in models.items():
        save_small_cnn(m, ckpt / f"small_cnn_{tag}{name}.safetensors")

    results: dict[str, object] = {"config": vars(args) | {"out": None},
                                  "n_train": len(ytr), "n_val": len(yva)}
    attack = PGDConfig("l2", args.eps, args.eval_steps)
    for name, m in models.items():
        clean, rob = robust_accuracy(m, xva, yva, attack,
                                     generator=torch.Generator().manual_seed(0))
        results[name] = {"clean_acc": clean, "robust_acc": rob}
        print(f"{name}: clean {clean:.3f}  robust(ℓ2 ε={args.eps}) {rob:.3f}", flush=True)

    # -- inversion from noise (Eq. 5): one validation image per class ------------------------
    idx = torch.stack([(yva == c).nonzero()[0, 0] for c in range(10)])
    targets = xva[idx]
    seed = noise_seed(targets.shape, generator=torch.Generator().manual_seed(1))
    sigma = size / 16  # low-pass scale fixed in advance: 2 px at 32 px, 4 px at 64 px
    lp_t = lowpass(targets, sigma)
    results["inversion_seed"] = {"ssim": ssim(seed, targets), "rmse": rmse(seed, targets),
                                 "rmse_lowpass": rmse(lowpass(seed, sigma), lp_t)}
    results["lowpass_sigma_px"] = sigma
    inv = {}
    for name, m in models.items():
        inv[name], trace = scheduled_inversion(m, targets, seed, args)
        r = results[name]
        r["inversion_ssim"] = ssim(inv[name], targets)
        r["inversion_rmse"] = rmse(inv[name], targets)
        r["inversion_rmse_lowpass"] = rmse(lowpass(inv[name], sigma), lp_t)
        r["inversion_rel_rep_distance"] = trace[-1]
        r["inversion_rel_rep_distance_trace"] = trace
        print(f"{name}: inversion SSIM {r['inversion_ssim']:.3f} RMSE {r['inversion_rmse']:.3f}"
              f" low-pass RMSE {r['inversion_rmse_lowpass']:.3f}"
              f" rel. distance {trace[0]:.3f} -> {trace[-1]:.4f}", flush=True)
    save_figure(torch.cat([targets, seed, inv["standard"], inv["robust"]]),
              figs / f"robust_{tag}inversion.png", nrow=10)

    # -- class visualizations (§4.1 with the class logit as coordinate) --------------------
    seeds = torch.cat([torch.full((1, 3, size, size), 0.5),
                       noise_seed((2, 3, size, size), generator=torch.Generator().manual_seed(2))])
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(10)])
    vis = {}
    for name, m in models.items():
        v = class_visualizations(m, seeds, args)  # (10, S, 3, size, size)
        vis[name] = v
        with torch.no_grad():
            pred = m(v.flatten(0, 1)).argmax(1).view(10, -1)
        hit = (pred == torch.arange(10)[:, None]).float().mean().item()
        sim = ssim(v.flatten(0, 1), means.repeat_interleave(v.shape[1], 0))
        results[name]["class_vis_self_prediction"] = hit
        results[name]["class_vis_ssim_to_class_mean"] = sim
        print(f"{name}: class vis self-prediction {hit:.3f} SSIM to mean {sim:.3f}", flush=True)
    save_figure(torch.cat([means, vis["standard"][:, 0], vis["robust"][:, 0]]),
              figs / f"robust_{tag}class_vis.png", nrow=10)

    # -- the robust model's other representation tools -------------------------------------
    rm = models["robust"]
    scale = math.sqrt(3 * size * size / (3 * 224 * 224))  # App. A.6's ε = 40 carried over
    acc, _ = accentuate(rm, targets, k=5, eps=40 * scale, steps=60, step_size=1.0 * scale)
    save_figure(torch.cat([targets, acc]), figs / f"robust_{tag}accentuate.png", nrow=10)
    x1, x2 = targets[:5], targets[5:]
    path = interpolate(rm, x1, x2, torch.linspace(0, 1, 6), eps=1000.0,
                       steps=max(args.inv_steps // 2, 1), step_size=args.inv_step)
    save_figure(path.transpose(0, 1).flatten(0, 1), figs / f"robust_{tag}interpolation.png",
              nrow=6)

    results["classes"] = (list(PHOTO_CLASSES) if args.dataset == "photos"
                          else [str(c) for c in range(10)])
    results["seconds"] = round(time.time() - t_start, 1)
    name = "robust_results" + ("" if args.dataset == "photos" else f"_{args.dataset}")
    (out / f"{name}.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
