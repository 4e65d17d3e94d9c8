"""Robust vs. standard representations in miniature (`robust-representations…` §3–§5).

Trains a standard and an ℓ2-PGD adversarially trained SmallCNN on the embedded 64×64
photo patches (10 classes) on the CPU with :class:`RobustClassifier`, then reports:

- clean and robust accuracy of both (a stronger 20-step PGD attack than in training);
- representation inversion from Gaussian noise (Eq. 5): SSIM and pixel RMSE to the target;
- class visualizations (maximizing the class logit from a grey/noise seed with the engine's
  norm-constrained maximization, §4.1): how often the model predicts that class on its
  own visualization, and SSIM to the class mean image;
- feature accentuation (Eq. 7–8) and interpolation (Eq. 6) figures of the robust model.

Writes ``docs/figures/robust_*.png`` and ``docs/robust_results.json``.

    python scripts/train_robust.py            # ~10 min on 2 CPU cores
    python scripts/train_robust.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.adversarial import (
    PGDConfig,
    accentuate,
    interpolate,
    invert,
    noise_seed,
    robust_accuracy,
)
from lightning_fv.data import PHOTO_CLASSES, photo_patches
from lightning_fv.models import SmallCNN, save_small_cnn
from lightning_fv.modules.robust_classifier import RobustClassifier
from lightning_fv.optvis import maximize_in_ball, preserved_state
from lightning_fv.utils import save_grid

ROOT = Path(__file__).resolve().parents[1]


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of ``(N, 3, H, W)`` image pairs in [0, 1] (skimage, RGB)."""
    from skimage.metrics import structural_similarity

    vals = [
        structural_similarity(x.permute(1, 2, 0).numpy(), y.permute(1, 2, 0).numpy(),
                              channel_axis=2, data_range=1.0)
        for x, y in zip(a.detach().float().cpu(), b.detach().float().cpu())
    ]
    return float(np.mean(vals))


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt())


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--n-train", type=int, default=120, help="training patches per class")
    ap.add_argument("--n-val", type=int, default=30)
    ap.add_argument("--widths", type=int, nargs=4, default=[16, 32, 48, 64])
    ap.add_argument("--eps", type=float, default=2.0, help="ℓ2 radius, [0,1] pixel units")
    ap.add_argument("--train-steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--eval-steps", type=int, default=20)
    ap.add_argument("--inv-steps", type=int, default=400)
    ap.add_argument("--inv-step", type=float, default=0.1)
    ap.add_argument("--vis-steps", type=int, default=200)
    ap.add_argument("--vis-step", type=float, default=0.1)
    ap.add_argument("--vis-eps", type=float, default=20.0)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.n_train, args.n_val = 1, 10, 4
        args.inv_steps = args.vis_steps = args.eval_steps = 3
    torch.set_num_threads(2)
    out = Path(args.out)
    figs = out / "figures"
    figs.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    xtr, ytr = photo_patches("train", args.n_train, 64)
    xva, yva = photo_patches("val", args.n_val, 64)
    data = (xtr, ytr, xva, yva)
    models = {"standard": train(False, data, args), "robust": train(True, data, args)}
    ckpt = ROOT / "outputs" / "robust"
    ckpt.mkdir(parents=True, exist_ok=True)
    for name, m in models.items():
        save_small_cnn(m, ckpt / f"small_cnn_{name}.safetensors")

    results: dict[str, object] = {"config": vars(args) | {"out": None}}
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
    inv = {}
    for name, m in models.items():
        inv[name] = invert(m, targets, x0=seed, eps=1000.0, steps=args.inv_steps,
                           step_size=args.inv_step)
        results[name]["inversion_ssim"] = ssim(inv[name], targets)
        results[name]["inversion_rmse"] = rmse(inv[name], targets)
    save_grid(torch.cat([targets, seed, inv["standard"], inv["robust"]]),
              figs / "robust_inversion.png", nrow=10)

    # -- class visualizations (§4.1 with the class logit as coordinate) --------------------
    seeds = torch.cat([torch.full((1, 3, 64, 64), 0.5),
                       noise_seed((2, 3, 64, 64), generator=torch.Generator().manual_seed(2))])
    means = torch.stack([xtr[ytr == c].mean(0) for c in range(10)])
    vis = {}
    for name, m in models.items():
        v = class_visualizations(m, seeds, args)  # (10, S, 3, 64, 64)
        vis[name] = v
        with torch.no_grad():
            pred = m(v.flatten(0, 1)).argmax(1).view(10, -1)
        hit = (pred == torch.arange(10)[:, None]).float().mean().item()
        sim = ssim(v.flatten(0, 1), means.repeat_interleave(v.shape[1], 0))
        results[name]["class_vis_self_prediction"] = hit
        results[name]["class_vis_ssim_to_class_mean"] = sim
    save_grid(torch.cat([means, vis["standard"][:, 0], vis["robust"][:, 0]]),
              figs / "robust_class_vis.png", nrow=10)

    # -- the robust model's other representation tools -------------------------------------
    rm = models["robust"]
    scale = math.sqrt(3 * 64 * 64 / (3 * 224 * 224))  # App. A.6's ε = 40 carried to 64 px
    acc, _ = accentuate(rm, targets, k=5, eps=40 * scale, steps=60, step_size=1.0 * scale)
    save_grid(torch.cat([targets, acc]), figs / "robust_accentuate.png", nrow=10)
    x1, x2 = targets[:5], targets[5:]
    path = interpolate(rm, x1, x2, torch.linspace(0, 1, 6), eps=1000.0,
                       steps=max(args.inv_steps // 2, 1), step_size=args.inv_step)
    save_grid(path.transpose(0, 1).flatten(0, 1), figs / "robust_interpolation.png", nrow=6)

    results["classes"] = list(PHOTO_CLASSES)
    results["seconds"] = round(time.time() - t_start, 1)
    (out / "robust_results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
