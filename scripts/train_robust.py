"""Robust vs. standard representations in miniature, measured with the paper's quantities
(`robust-representations…`: §3 Eq. 3, §4.1 Eq. 4, §4.2 Eq. 5, App. A.3–A.5).

Trains three models on the CPU, on one of the embedded data sets (``--dataset digits``:
sklearn's handwritten digits at 32×32; ``--dataset photos``: the 64×64 photo patches,
10 photos as classes), all on the same training split:

- a **standard** and an **ℓ2-robust** SmallCNN (same architecture and initialisation).
  Their representation ``R(x)`` is the input of the final linear layer (§2): the globally
  pooled output of ``block4``, ``widths[-1]`` dimensions (256 by default: widths
  16/32/64/256, wider than the earlier 64-d model so that there is more to invert);
- a **held-out judge**: a standard classifier of a different architecture (a LeNet-style
  CNN: two 5×5 convolutions with batch norm and max pooling, average pooling to 4×4, a
  hidden fully connected layer) and another seed, trained on the same split and never used
  in any optimization below.

ε is the paper's, carried to the image size by the package's √d rule
(:func:`lightning_fv.adversarial.preset`): App. A.3 (Table 3) trains the restricted-ImageNet
model with ℓ2 PGD, ε = 3.5, 7 steps of 0.1, at 3×224×224; at ``d = 3·s·s`` values both are
multiplied by ``√(d / (3·224·224)) = s / 224``, so at 32 px ε = 3.5 · 32/224 = **0.5**
(step 0.1/7 ≈ 0.0143), at 64 px ε = 1.0. Robust accuracy is measured with PGD-20 at the
same ε (step 2.5·ε/20).

Reported (the paper's quantities):

- **inversion** (Eq. 5, §4.2, App. A.5): ``min_δ ‖R(x0 + δ) − R(x_targ)‖₂`` for
  ``--per-class`` validation images per class, from Gaussian noise (Fig. 5, 6, 13b) and from
  a validation image of the next class (Fig. 13a). An inversion counts as recognised when
  the held-out judge assigns it to the target's class; reported as a fraction, next to the
  judge's accuracy on clean validation images (the reference) and on the seeds (chance).
  A second judge that cannot share the CNNs' adversarial directions, a 1-nearest-neighbour
  classifier in pixel space (training images), is reported as a cross-check. App. A.5 at
  224 px is ε = 1000, 10 000 steps of 1; here the step starts at 1 · s/224 and decays
  geometrically ×``--inv-decay`` over ``--inv-chunks`` chunks of ``--inv-steps`` steps in
  all (fewer steps than the paper, for CPU time; the final relative representation
  distance shows whether the optimization converged);
- **feature visualization** (Eq. 4, §4.1, App. A.4): ``max_δ R(x0 + δ)_i`` for
  ``--fv-coords`` coordinates of ``R`` (random among those active on validation images)
  from ``--fv-seeds`` starting points (grey, Gaussian noise, validation images), with
  App. A.4's ε = 1000, 200 steps of 1, rescaled by s/224. Measured: the mean Pearson
  correlation of the change ``δ`` made for the same coordinate from two different starting
  points, against the mean for two different coordinates from the same two starting points
  (:func:`feature_consistency`); "same − different" > 0 means a coordinate adds a pattern of
  its own from every starting point (§4.1).

Also in the JSON under ``not_paper_quantities``: SSIM and pixel RMSE of the noise-seeded
inversions to their targets (and RMSE after a Gaussian blur), the earlier headline numbers.

Writes ``robust_results_digits.json`` / ``robust_results.json`` (photos) and
``figures/robust_[digits_]*.png``
into ``--out``: by default a fresh ``outputs/robust/<dataset>[_quick]/version_N/``; an
explicit folder that already holds these files is refused unless ``--overwrite`` (the
digits docs were made with ``--out docs --overwrite``; the photos results were copied
there from their run folder). Model weights go to ``<run folder>/checkpoints``.

    python scripts/train_robust.py --dataset digits   # ~260 s of CPU time, 1 thread (measured)
    python scripts/train_robust.py --dataset photos   # ~620 s of CPU time (measured)
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

from lightning_fv.adversarial import PGDConfig, accentuate, noise_seed, preset, robust_accuracy
from lightning_fv.adversarial.representation import (
    coordinate_visualizations,
    feature_consistency,
    invert_scheduled,
    recognition_rate,
    representation,
)
from lightning_fv.data import PHOTO_CLASSES, digits, photo_patches
from lightning_fv.ifv.evaluation import ssim as ifv_ssim
from lightning_fv.models import SmallCNN, save_small_cnn
from lightning_fv.modules.robust_classifier import RobustClassifier
from lightning_fv.optvis.objectives import gaussian_blur
from lightning_fv.utils import next_version_dir, save_grid
from lightning_fv.utils.preprocess import Normalize

IMAGENET_SIDE = 224
# Per-data-set defaults; every value can be overridden on the command line.
PRESETS: dict[str, dict[str, object]] = {
    "photos": dict(size=64, epochs=8, n_train=100, n_val=30, widths=[16, 32, 64, 256],
                   warmup=60, batch=50, lr=0.05, per_class=3, inv_steps=1000,
                   inv_decay=0.1, inv_chunks=10),
    "digits": dict(size=32, epochs=12, n_train=0, n_val=0, widths=[16, 32, 64, 256],
                   warmup=100, batch=64, lr=0.05, per_class=3, inv_steps=1000,
                   inv_decay=0.1, inv_chunks=10),
}
NOT_PAPER = ("not the paper's quantities: SSIM / pixel RMSE of the noise-seeded inversions "
             "to their targets (RMSE also after a Gaussian blur), the earlier headline numbers")


class HeldOutJudge(nn.Sequential):
    """The held-out classifier (LeNet-style, unlike SmallCNN: two 5×5 convolutions with
    batch norm and max pooling, average pooling to 4×4, a hidden fully connected layer):
    ``(B, 3, s, s)`` in [0, 1] → logits."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__(
            Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
            nn.Conv2d(3, 16, 5, padding=2), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(),
            nn.Linear(64, num_classes),
        )


class PixelNN(nn.Module):
    """1-nearest-neighbour classifier in pixel space (ℓ2): ``(B, C, H, W)`` → one-hot
    "logits" ``(B, num_classes)`` of the nearest training image's label."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, num_classes: int = 10) -> None:
        super().__init__()
        self.register_buffer("x", x.flatten(1))
        self.register_buffer("y", y)
        self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        nearest = torch.cdist(images.flatten(1), self.x).argmin(1)
        return nn.functional.one_hot(self.y[nearest], self.num_classes).float()


class EpochPrinter(L.Callback):
    def __init__(self, name: str) -> None:
        self.name, self.t0 = name, time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        print(f"  {self.name}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs} "
              f"({time.time() - self.t0:.0f} s)", flush=True)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of ``(N, 3, H, W)`` image pairs in [0, 1] (torchmetrics, as in IFV)."""
    return float(ifv_ssim(a.detach().float().cpu(), b.detach().float().cpu()).mean())


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


def save_figure(images: torch.Tensor, path: Path, nrow: int) -> None:
    """:func:`save_grid`, small images enlarged (nearest neighbour) to at least 64 px."""
    k = max(1, 64 // images.shape[-1])
    save_grid(torch.nn.functional.interpolate(images, scale_factor=k, mode="nearest")
              if k > 1 else images, path, nrow=nrow)
    print(f"  wrote {path}", flush=True)


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


def train(kind: str, data: tuple, args: argparse.Namespace) -> tuple[nn.Module, float]:
    """Train ``kind`` ∈ {standard, robust, judge}; returns the eval-mode model and seconds."""
    xtr, ytr, xva, yva = data
    L.seed_everything(1 if kind == "judge" else 0, verbose=False)
    robust = kind == "robust"
    net = (HeldOutJudge() if kind == "judge"
           else SmallCNN(num_classes=10, widths=tuple(args.widths)))
    module = RobustClassifier(
        net, num_classes=10, norm="l2", eps=args.eps, steps=args.train_steps,
        step_size=args.train_step, adversarial=robust, val_attack=False,
        eps_warmup_steps=args.warmup if robust else 0, train_clean_acc=False, lr=args.lr,
    )
    g = torch.Generator().manual_seed(1 if kind == "judge" else 0)
    tl = DataLoader(TensorDataset(xtr, ytr), batch_size=args.batch, shuffle=True, generator=g)
    vl = DataLoader(TensorDataset(xva, yva), batch_size=256)
    trainer = L.Trainer(accelerator="cpu", max_epochs=args.epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        check_val_every_n_epoch=args.epochs, callbacks=[EpochPrinter(kind)])
    t0 = time.time()
    trainer.fit(module, tl, vl)
    sec = time.time() - t0
    print(f"{kind} training: {sec:.0f} s", flush=True)
    return module.model.backbone.eval(), sec


def pick(y: torch.Tensor, per_class: int, skip: int = 0) -> torch.Tensor:
    """Indices of ``per_class`` images of each class (after the first ``skip``), class-major."""
    return torch.stack([(y == c).nonzero()[skip:skip + per_class, 0] for c in range(10)],
                       ).flatten()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=sorted(PRESETS), default="digits")
    ap.add_argument("--quick", action="store_true", help="a smoke run at a tiny size")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--size", type=int, help="image side (photos 64, digits 32)")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--n-train", type=int,
                    help="training images per class (digits: 0 = all 1438)")
    ap.add_argument("--n-val", type=int, help="validation images per class (digits: 0 = all 359)")
    ap.add_argument("--widths", type=int, nargs=4, help="SmallCNN widths (R has the last)")
    ap.add_argument("--eps", type=float, help="ℓ2 radius in [0,1] pixel units (default: "
                    "App. A.3's 3.5 × size/224, 0.5 at 32 px)")
    ap.add_argument("--train-steps", type=int, default=7, help="PGD steps (App. A.3: 7)")
    ap.add_argument("--warmup", type=int, help="ε warm-up (optimizer steps)")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--per-class", type=int, help="inversion targets per class")
    ap.add_argument("--inv-steps", type=int)
    ap.add_argument("--inv-decay", type=float, help="final / initial inversion step size")
    ap.add_argument("--inv-chunks", type=int, help="constant-step chunks of the schedule")
    ap.add_argument("--fv-steps", type=int, default=200, help="Eq. 4 steps (App. A.4: 200)")
    ap.add_argument("--fv-coords", type=int, default=12, help="coordinates visualized")
    ap.add_argument("--fv-seeds", type=int, default=6,
                    help="starting points: grey, 2 noise, the rest validation images")
    ap.add_argument("--out", help="results folder (default: a fresh "
                    "outputs/robust/<dataset>[_quick]/version_N)")
    ap.add_argument("--figures", help="figures folder (default: <out>/figures)")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace results of the same name in --out / --figures")
    args = ap.parse_args(argv)
    for key, value in PRESETS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.epochs, args.n_train, args.n_val, args.per_class = 1, 10, 10, 1
        args.inv_steps = args.fv_steps = args.eval_steps = 3
        args.inv_chunks, args.fv_coords, args.fv_seeds = 1, 2, 3
    # ε and the training step: App. A.3 (ε = 3.5, 7 steps of 0.1 at 224 px) carried to
    # 3·size·size values by the package's √d rule (factor size/224).
    scale = math.sqrt(3 * args.size ** 2 / (3 * IMAGENET_SIDE ** 2))
    train_cfg = preset("paper_training", (3, args.size, args.size))
    if args.eps is None:
        args.eps = train_cfg.eps
    args.train_step = args.eps * train_cfg.step_size / train_cfg.eps  # App. A.3's 0.1/3.5
    args.scale = scale
    return args


def outputs(args: argparse.Namespace) -> tuple[Path, Path, Path, str]:
    """``(out, figures, run folder, tag)``; refuses to replace an earlier result."""
    default = Path("outputs/robust") / (args.dataset + ("_quick" if args.quick else ""))
    run = next_version_dir(default)
    out = Path(args.out) if args.out else run
    figs = Path(args.figures) if args.figures else out / "figures"
    tag = "" if args.dataset == "photos" else f"{args.dataset}_"
    name = "robust_results" + ("" if args.dataset == "photos" else f"_{args.dataset}")
    planned = [out / f"{name}.json"] + [
        figs / f"robust_{tag}{f}.png"
        for f in ("inversion", "feature_vis_standard", "feature_vis_robust", "accentuate")]
    taken = [str(p) for p in planned if p.exists()]
    if taken and not args.overwrite:
        run.rmdir()
        raise SystemExit(f"refusing to overwrite an earlier result: {', '.join(taken)}; "
                         "pass another --out/--figures or --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    figs.mkdir(parents=True, exist_ok=True)
    return out / f"{name}.json", figs, run, tag


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    json_path, figs, run, tag = outputs(args)
    print(f"results: {json_path}; figures: {figs}/robust_{tag}*.png; checkpoints: "
          f"{run / 'checkpoints'}", flush=True)
    t_start = time.time()
    size, scale = args.size, args.scale

    data = load_data(args)
    xtr, ytr, xva, yva = data
    print(f"{args.dataset}: {len(ytr)} training / {len(yva)} validation images of {size} px; "
          f"ℓ2 ε = {args.eps:.4g} (App. A.3's 3.5 × {size}/224), PGD-{args.train_steps} "
          f"of {args.train_step:.4g}", flush=True)
    models, timings = {}, {}
    for kind in ("standard", "robust", "judge"):
        models[kind], timings[f"train_{kind}_s"] = train(kind, data, args)
    judge = models.pop("judge")
    (run / "checkpoints").mkdir(exist_ok=True)
    for name, m in models.items():
        save_small_cnn(m, run / "checkpoints" / f"small_cnn_{tag}{name}.safetensors")
    torch.save(judge.state_dict(), run / "checkpoints" / f"judge_{tag}.pt")
    pixel_nn = PixelNN(xtr, ytr)

    with torch.no_grad():
        dim = representation(models["robust"], xva[:2]).shape[1]
    results: dict[str, object] = {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "figures")},
        "n_train": len(ytr), "n_val": len(yva),
        "epsilon": {
            "paper": "App. A.3, Table 3: restricted ImageNet, l2 eps = 3.5, 7 steps of 0.1, "
                     "3x224x224 inputs",
            "rule": "eps_d = eps_224 * sqrt(d / (3*224*224)) = eps_224 * size / 224 "
                    "(lightning_fv.adversarial.preset)",
            "eps": args.eps, "train_step": args.train_step, "train_steps": args.train_steps,
            "eval": f"PGD-{args.eval_steps}, step 2.5*eps/{args.eval_steps}, random start"},
        "representation": {"layer": "input of fc (global average pool of block4)",
                           "dim": dim, "widths": list(args.widths)},
        "judge": {"architecture": "LeNet-style CNN (5x5 convs 16/32 with batch norm, max "
                                  "pools, average pool to 4x4, fc 64), "
                                  "seed 1, standard training on the same split",
                  "clean_acc": recognition_rate(judge, xva, yva),
                  "pixel_1nn_clean_acc": recognition_rate(pixel_nn, xva, yva)},
    }
    print(f"held-out judge: clean accuracy {results['judge']['clean_acc']:.3f} "
          f"(pixel 1-NN {results['judge']['pixel_1nn_clean_acc']:.3f})", flush=True)
    attack = PGDConfig("l2", args.eps, args.eval_steps)
    for name, m in models.items():
        clean, rob = robust_accuracy(m, xva, yva, attack,
                                     generator=torch.Generator().manual_seed(0))
        results[name] = {"clean_acc": clean, "robust_acc": rob}
        print(f"{name}: clean {clean:.3f}  robust (ℓ2 ε = {args.eps:.3g}, PGD-"
              f"{args.eval_steps}) {rob:.3f}", flush=True)
    # does the judge share the standard model's adversarial directions? (transfer)
    x_adv = attack(models["standard"], xva, yva, generator=torch.Generator().manual_seed(0))
    results["judge"]["acc_on_standard_model_pgd"] = recognition_rate(judge, x_adv, yva)
    print(f"held-out judge on the standard model's PGD examples: accuracy "
          f"{results['judge']['acc_on_standard_model_pgd']:.3f}", flush=True)

    # -- inversion (Eq. 5) from noise and from another class's image --------------------
    t0 = time.time()
    idx = pick(yva, args.per_class)
    targets, labels = xva[idx], yva[idx]
    seed_idx = pick(yva, args.per_class, skip=args.per_class)  # disjoint from the targets
    order = torch.cat([torch.arange(args.per_class * (c + 1) % (10 * args.per_class),
                                    args.per_class * (c + 1) % (10 * args.per_class)
                                    + args.per_class) for c in range(10)])
    img_seed, img_seed_labels = xva[seed_idx[order]], yva[seed_idx[order]]  # next class
    seeds = {"noise": noise_seed(targets.shape, generator=torch.Generator().manual_seed(1)),
             "image": img_seed}
    n = len(labels)
    inv_step = 1.0 * scale  # App. A.5's step 1 at 224 px
    results["inversion_settings"] = {
        "targets": n, "per_class": args.per_class, "steps": args.inv_steps,
        "step_size": f"{inv_step:.4g} decaying to {inv_step * args.inv_decay:.4g} "
                     f"geometrically over {args.inv_chunks} chunks",
        "eps": 1000 * scale, "paper": "App. A.5: eps 1000, 10000 steps of 1 at 224 px",
        "noise_seed": "clip(0.5 + 0.1 N(0,1), 0, 1)",
        "image_seed": "a validation image of the next class (c+1 mod 10), not a target"}
    results["judge"]["on_noise_seeds"] = recognition_rate(judge, seeds["noise"], labels)
    results["judge"]["on_image_seeds_target_class"] = recognition_rate(judge, img_seed, labels)
    batch_x0 = torch.cat([seeds["noise"], seeds["image"]])
    batch_t = torch.cat([targets, targets])
    inv = {}
    for name, m in models.items():
        print(f"{name}: inverting {2 * n} representations (Eq. 5, {args.inv_steps} steps)",
              flush=True)
        t1 = time.time()

        def report(done: int, dist: float, name: str = name, t1: float = t1) -> None:
            print(f"  {name}: step {done}/{args.inv_steps}, relative distance {dist:.4f} "
                  f"({time.time() - t1:.0f} s)", flush=True)

        x, trace = invert_scheduled(m, batch_t, batch_x0, steps=args.inv_steps,
                                    step_size=inv_step, decay=args.inv_decay,
                                    chunks=args.inv_chunks, eps=1000 * scale,
                                    progress=report)
        inv[name] = {"noise": x[:n], "image": x[n:]}
        r = results[name]["inversion"] = {"rel_rep_distance_trace": trace}
        for kind, xi in inv[name].items():
            d = {"heldout_recognised": recognition_rate(judge, xi, labels),
                 "pixel_1nn_recognised": recognition_rate(pixel_nn, xi, labels),
                 "own_model_recognised": recognition_rate(m, xi, labels)}
            if kind == "image":
                d["heldout_seed_class"] = recognition_rate(judge, xi, img_seed_labels)
            with torch.no_grad():
                rt, ri = representation(m, targets), representation(m, xi)
            d["final_rel_rep_distance"] = float(((ri - rt).norm(dim=1)
                                                 / rt.norm(dim=1).clamp_min(1e-12)).mean())
            r[kind] = d
            print(f"  {name}, from {kind}: held-out judge recognises "
                  f"{d['heldout_recognised']:.3f} (pixel 1-NN {d['pixel_1nn_recognised']:.3f}, "
                  f"own model {d['own_model_recognised']:.3f}); relative distance "
                  f"{d['final_rel_rep_distance']:.4f}", flush=True)
    timings["inversion_s"] = time.time() - t0
    first = torch.arange(0, n, args.per_class)  # one target per class for the figure
    save_figure(torch.cat([targets[first], seeds["noise"][first], inv["standard"]["noise"][first],
                           inv["robust"]["noise"][first], img_seed[first],
                           inv["standard"]["image"][first], inv["robust"]["image"][first]]),
                figs / f"robust_{tag}inversion.png", nrow=10)
    sigma = size / 16
    npq: dict[str, object] = {"note": NOT_PAPER, "lowpass_sigma_px": sigma,
                              "seed": {"ssim": ssim(seeds["noise"], targets),
                                       "rmse": rmse(seeds["noise"], targets)}}
    for name in models:
        xi = inv[name]["noise"]
        npq[name] = {"inversion_ssim": ssim(xi, targets), "inversion_rmse": rmse(xi, targets),
                     "inversion_rmse_lowpass": rmse(gaussian_blur(xi, sigma, padding="reflect"),
                                                    gaussian_blur(targets, sigma,
                                                                  padding="reflect"))}

    # -- feature visualization (Eq. 4): one coordinate from several starting points ----
    t0 = time.time()
    fv = preset("paper_feature_vis", (3, size, size))  # App. A.4 rescaled
    g = torch.Generator().manual_seed(2)
    n_img = max(args.fv_seeds - 3, 0)
    fv_seeds = torch.cat([torch.full((1, 3, size, size), 0.5),
                          noise_seed((2, 3, size, size), generator=g),
                          xva[pick(yva, 1, skip=2 * args.per_class)[:n_img]]])[: args.fv_seeds]
    results["feature_vis_settings"] = {
        "eps": fv.eps, "steps": args.fv_steps, "step_size": fv.step_size,
        "paper": "App. A.4: eps 1000, 200 steps of 1 at 224 px",
        "seeds": "grey, 2 Gaussian-noise images, validation images of different classes",
        "n_seeds": int(fv_seeds.shape[0]), "n_coords": args.fv_coords,
        "measure": "mean Pearson correlation of delta = x - x0 for one coordinate from two "
                   "different seeds ('same') vs two different coordinates from the same two "
                   "seeds ('different')"}
    for name, m in models.items():
        with torch.no_grad():
            act = representation(m, xva[:200]).mean(0)
        alive = (act > 1e-6).nonzero().flatten()
        coords = alive[torch.randperm(len(alive), generator=g)[: args.fv_coords]].sort().values
        print(f"{name}: Eq. 4 for {len(coords)} of {len(alive)} active coordinates from "
              f"{len(fv_seeds)} seeds ({args.fv_steps} steps)", flush=True)
        v = coordinate_visualizations(m, fv_seeds, coords, eps=fv.eps, steps=args.fv_steps,
                                      step_size=fv.step_size)
        delta = v - fv_seeds[:, None]
        same, diff = feature_consistency(delta)
        unmoved = int((delta.flatten(2).std(2) == 0).sum())
        with torch.no_grad():
            rise = (representation(m, v.flatten(0, 1)).view(len(fv_seeds), len(coords), -1)
                    .gather(2, coords.view(1, -1, 1).expand(len(fv_seeds), -1, 1)).squeeze(2)
                    - representation(m, fv_seeds)[:, coords])
        results[name]["feature_vis"] = {
            "coords": coords.tolist(), "active_coords": len(alive),
            "unmoved_visualizations": unmoved, "same": same,
            "different": diff, "same_minus_different": same - diff,
            "mean_coordinate_increase": float(rise.mean())}
        print(f"  {name}: δ correlation, same coordinate {same:.3f} vs different "
              f"{diff:.3f} (gap {same - diff:.3f})", flush=True)
        save_figure(torch.cat([fv_seeds[:, None], v], 1).flatten(0, 1),
                    figs / f"robust_{tag}feature_vis_{name}.png", nrow=len(coords) + 1)
    timings["feature_vis_s"] = time.time() - t0

    # -- the robust model's feature accentuation (Eq. 7-8, App. A.6 rescaled) ----------
    sens = preset("paper_sensitivity", (3, size, size))
    acc, _ = accentuate(models["robust"], targets[first], k=5, eps=sens.eps,
                        steps=args.fv_steps if args.quick else sens.steps,
                        step_size=sens.step_size)
    save_figure(torch.cat([targets[first], acc]), figs / f"robust_{tag}accentuate.png",
                nrow=10)

    results["not_paper_quantities"] = npq
    results["classes"] = (list(PHOTO_CLASSES) if args.dataset == "photos"
                          else [str(c) for c in range(10)])
    results["timings"] = {k: round(v, 1) for k, v in timings.items()}
    results["seconds"] = round(time.time() - t_start, 1)
    results["threads"] = args.threads
    json_path.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: results[k] for k in ("judge", "standard", "robust")}, indent=2))
    print(f"wrote {json_path} ({results['seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
