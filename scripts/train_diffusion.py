"""Reproduce lightning_fv/assets/dit_digits.safetensors: a small class-conditional LightningDiT.

    python scripts/train_diffusion.py                 # ~10 min of training on a CPU core
    python scripts/train_diffusion.py --minutes 2 --out /tmp/dit.safetensors   # quick try

Data: the embedded digits (``lightning_fv.data.digits``, 32×32 RGB in [0, 1], 1437 training
images, themselves 8×8 scans up-sampled bilinearly). Autoencoder: the weight-free
:class:`ResizeAutoencoder` (grey value, 4× average pooling → 1×8×8 latents; decoding =
bilinear 4× up-sampling), so the DiT works on an 8×8×1 latent with patch size 2 (16 tokens).
Model: LightningDiT with the release options (SwiGLU, RoPE, RMSNorm), hidden 128, depth 4,
4 heads. Training: the release's flow-matching recipe (velocity, logit-normal t, cosine loss,
AdamW β₂ = 0.95, EMA) via :class:`LatentDiffusionModule`, seed 0, time-limited.

Evaluation (printed and stored in the checkpoint metadata): class-conditional samples
(``--eval-per-class`` per digit, Euler, ``--eval-steps`` steps, CFG ``--cfg``) are classified
by the bundled digits CNN (``small_cnn_digits.safetensors``; a tiny CNN is trained here if it
is missing) and compared with real digits by FID (torchmetrics) on that CNN's penultimate
features. The same FID between the real training and validation images is reported as the
floor.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.data import digits
from lightning_fv.diffusion.model import LightningDiT
from lightning_fv.diffusion.pipeline import ASSET
from lightning_fv.modules.latent_diffusion import LatentDiffusionModule
from lightning_fv.utils import save_grid

ROOT = Path(__file__).resolve().parent.parent


class PenultimateFeatures(nn.Module):
    """``SmallCNN.features`` as a torchmetrics FID feature extractor (input [0, 1] RGB)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net.eval()
        self.num_features = int(net.widths[-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.net.features(x.float())


def digits_classifier() -> tuple[nn.Module, str]:
    """The bundled digits CNN, or a tiny one trained here if the asset is missing."""
    from lightning_fv.models import SmallCNN, load_small_cnn
    from lightning_fv.models.registry import ASSETS

    path = ASSETS / "small_cnn_digits.safetensors"
    if path.is_file():
        return load_small_cnn(path).eval(), "bundled small_cnn_digits"
    x, y = digits("train")
    net = SmallCNN(10, widths=(16, 32, 48, 64))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        for idx in torch.randperm(len(y), generator=g).split(64):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval(), "tiny CNN trained in this script (bundled asset missing)"


@torch.no_grad()
def fid(extractor: nn.Module, real: Tensor, fake: Tensor) -> float:
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=extractor, normalize=True,
                                      input_img_size=tuple(real.shape[1:]))
    for chunk in real.split(256):
        metric.update(chunk, real=True)
    for chunk in fake.split(256):
        metric.update(chunk, real=False)
    return float(metric.compute())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="training time limit")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-steps", type=int, default=20000)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-per-class", type=int, default=30)
    ap.add_argument("--eval-steps", type=int, default=25)
    ap.add_argument("--cfg", type=float, default=2.0)
    ap.add_argument("--out", type=Path, default=ASSET)
    ap.add_argument("--figure", type=Path,
                    default=ROOT / "docs/figures/diffusion_digits_samples.png")
    args = ap.parse_args()

    L.seed_everything(0, workers=True)
    torch.set_flush_denormal(True)
    torch.set_num_threads(args.threads)
    x, y = digits("train")
    loader = DataLoader(TensorDataset(x, y), batch_size=args.batch_size, shuffle=True,
                        drop_last=True)
    dit = LightningDiT(input_size=8, patch_size=2, in_channels=1, hidden_size=128, depth=4,
                       num_heads=4, num_classes=10, class_dropout_prob=0.1, use_swiglu=True,
                       use_rope=True, use_rmsnorm=True)
    module = LatentDiffusionModule(
        model=dit, ae_factor=4, ae_latent_channels=1,
        lr=args.lr, ema_decay=0.999, sample_steps=args.eval_steps, cfg_scale=args.cfg)
    trainer = L.Trainer(max_steps=args.max_steps, max_time={"minutes": args.minutes},
                        accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, gradient_clip_val=1.0, max_epochs=-1)
    t0 = time.time()
    trainer.fit(module, train_dataloaders=loader)
    minutes = (time.time() - t0) / 60
    steps = trainer.global_step
    print(f"trained {steps} steps in {minutes:.1f} min")

    # ---- evaluation: class-conditional samples, bundled classifier, FID on its features
    labels = torch.arange(10).repeat_interleave(args.eval_per_class)
    g = torch.Generator().manual_seed(1)
    t1 = time.time()
    fake = torch.cat([module.generate(chunk, generator=g) for chunk in labels.split(100)])
    sample_s = time.time() - t1
    clf, clf_name = digits_classifier()
    with torch.no_grad():
        acc = float((clf(fake).argmax(1) == labels).float().mean())
    x_val, _ = digits("val")
    extractor = PenultimateFeatures(clf)
    fid_fake = fid(extractor, x, fake)
    fid_floor = fid(extractor, x, x_val)
    report = {"train_steps": steps, "train_minutes": round(minutes, 1),
              "classifier": clf_name, "sample_accuracy": round(acc, 4),
              "fid_samples_vs_train": round(fid_fake, 3),
              "fid_val_vs_train": round(fid_floor, 3), "n_samples": len(labels),
              "sampler": {"num_steps": args.eval_steps, "cfg_scale": args.cfg,
                          "method": "euler"}, "sampling_seconds": round(sample_s, 1)}
    print(json.dumps(report, indent=1))
    module.export(args.out, extra={"report": report, "dataset": "digits",
                                   "classes": [str(i) for i in range(10)]},
                  dtype=torch.float16)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    grid_labels = torch.arange(10).repeat(8)
    grid = module.generate(grid_labels, generator=torch.Generator().manual_seed(2))
    save_grid(grid, args.figure, nrow=10)
    print(f"wrote {args.figure}")


if __name__ == "__main__":
    main()
