"""Reproduce the bundled checkpoints in lightning_fv/assets/.

    python scripts/train_bundled.py --dataset photo_patches              # ~5 min, 2 CPU cores
    python scripts/train_bundled.py --dataset digits
    python scripts/train_bundled.py --dataset photo_patches --arch vit   # ~8 min, 1-2 cores
    python scripts/train_bundled.py --dataset photo_patches --widths 64 128 192 256 \
        --out-dir outputs/wide_cnn                                       # a wider SmallCNN

``--arch cnn`` (default) trains :class:`lightning_fv.models.SmallCNN` with
:class:`ImageClassifier` (SGD, cosine schedule, seed 0) and writes
``small_cnn_<dataset>.safetensors``. ``--arch vit`` trains the tiny vision transformer
:class:`lightning_fv.models.vit.TinyViT` (64 px input, 8 px patches, 4 blocks of width 96)
with AdamW, a warm-up + cosine schedule, label smoothing 0.1 and random flips/shifts, and
writes ``vit_photo_patches.safetensors``. Both store the config, the validation accuracy and
the training time in the metadata.

``--widths`` trains a SmallCNN with other block widths (same data, schedule and seed); its
file is named ``small_cnn_<dataset>_w<widths>.safetensors`` (e.g. ``…_w64-128-192-256``) and
is never installed over the bundled one. ``--out-dir`` writes into the given folder instead
of a fresh ``outputs/train_bundled/version_N``. ``--n-train-per-class N`` trains on fewer
(or more) photo patches per class than the bundled models (400 for the CNN, 800 for the ViT);
with ``--epochs 1`` it is the quick check the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fv.data import DigitsDataModule, PhotoPatchesDataModule
from lightning_fv.data.embedded import photo_patches
from lightning_fv.models import SmallCNN
from lightning_fv.models.registry import ASSETS, BUNDLED, save_small_cnn
from lightning_fv.models.vit import TinyViT, tiny_vit_config
from lightning_fv.modules.classifier import ImageClassifier
from lightning_fv.utils.checkpoint import save_tensors
from lightning_fv.utils.files import next_version_dir


def train_cnn(dataset: str, epochs: int | None, out_dir: Path,
              widths: tuple[int, ...] | None = None, n_train_per_class: int = 400) -> None:
    """The bundled SmallCNN of ``dataset`` (``"photo_patches"`` or ``"digits"``); with
    ``widths`` a SmallCNN of those block widths, trained the same way (photo patches:
    ``n_train_per_class`` training patches per class)."""
    if dataset == "photo_patches":
        dm = PhotoPatchesDataModule(batch_size=64, n_train_per_class=n_train_per_class,
                                    n_val_per_class=80)
        default, size, epochs = (32, 64, 96, 128), 64, epochs or 14
    else:
        dm = DigitsDataModule(batch_size=64)
        default, size, epochs = (16, 32, 48, 64), 32, epochs or 10
    name = BUNDLED[dataset]
    if widths is not None and tuple(widths) != default:
        name += "_w" + "-".join(str(w) for w in widths)
    widths = tuple(widths or default)
    net = SmallCNN(num_classes=10, widths=widths)
    module = ImageClassifier(net, num_classes=10, lr=0.05, max_epochs=epochs)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, deterministic=True)
    t0 = time.time()
    trainer.fit(module, datamodule=dm)
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/acc"]
    minutes = (time.time() - t0) / 60
    out = out_dir / f"{name}.safetensors"
    save_small_cnn(net.eval(), out, extra={
        "val_acc": round(float(val), 4), "dataset": dataset, "input_size": [3, size, size],
        "classes": list(dm.classes), "epochs": epochs, "train_minutes": round(minutes, 1),
        "threads": torch.get_num_threads(),
    })
    print(f"{dataset}: val acc {val:.4f} after {epochs} epochs ({minutes:.1f} min) -> {out}")


def _augment(x: Tensor, g: torch.Generator, shift: int = 4) -> Tensor:
    """Random horizontal flips and integer shifts of up to ``shift`` pixels (reflection
    padding) of ``(B, 3, H, W)`` images, drawn from ``g``."""
    b, _, h, w = x.shape
    flip = torch.rand(b, generator=g) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (shift,) * 4, mode="reflect")
    dy, dx = (torch.randint(0, 2 * shift + 1, (2, b), generator=g)).tolist()
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


@torch.no_grad()
def _accuracy(model: torch.nn.Module, x: Tensor, y: Tensor, batch: int = 256) -> float:
    model.eval()
    hits = sum(int((model(x[s:s + batch]).argmax(1) == y[s:s + batch]).sum())
               for s in range(0, len(x), batch))
    return hits / len(x)


def train_vit(epochs: int | None, out_dir: Path, n_train_per_class: int = 800, batch: int = 128,
              lr: float = 2e-3, weight_decay: float = 0.05) -> None:
    """The bundled tiny ViT on the photo patches (64 px), a plain AdamW loop on the CPU."""
    epochs = epochs or 12
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    xtr, ytr = photo_patches("train", n_train_per_class, 64, 256, 0)
    xva, yva = photo_patches("val", 80, 64, 256, 0)
    net = TinyViT(num_classes=10)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(xtr) / batch)
    total, warmup = epochs * steps_per_epoch, steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / total))))
    t0 = time.time()
    for epoch in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g)
        loss_sum = 0.0
        for s in range(0, len(xtr), batch):
            idx = perm[s:s + batch]
            logits = net(_augment(xtr[idx], g))
            loss = F.cross_entropy(logits, ytr[idx], label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
        print(f"epoch {epoch + 1}/{epochs}: train loss {loss_sum / len(xtr):.3f}, "
              f"val acc {_accuracy(net, xva, yva):.4f} ({(time.time() - t0) / 60:.1f} min)",
              flush=True)
    val = _accuracy(net, xva, yva)
    minutes = (time.time() - t0) / 60
    out = out_dir / f"{BUNDLED['photo_patches_vit']}.safetensors"
    meta = {"config": tiny_vit_config(net), "arch": "tiny_vit", "val_acc": round(val, 4),
            "dataset": "photo_patches", "input_size": [3, 64, 64],
            "classes": list(PhotoPatchesDataModule.classes), "epochs": epochs,
            "n_train_per_class": n_train_per_class, "train_minutes": round(minutes, 1)}
    save_tensors(net.eval().state_dict(), out,
                 metadata={k: json.dumps(v) for k, v in meta.items()})
    print(f"photo_patches vit: val acc {val:.4f} after {epochs} epochs ({minutes:.1f} min) "
          f"-> {out}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=["digits", "photo_patches"], default="photo_patches")
    ap.add_argument("--arch", choices=["cnn", "vit"], default="cnn")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--install", action="store_true",
                    help="write into lightning_fv/assets, replacing the bundled checkpoint "
                         "(default: a fresh outputs/train_bundled/version_N)")
    ap.add_argument("--widths", type=int, nargs=4, default=None, metavar="W",
                    help="block widths of the SmallCNN (--arch cnn; default: the bundled "
                         "model's); the file name gets a _w<widths> suffix")
    ap.add_argument("--out-dir", default=None,
                    help="folder to write into (default: a fresh outputs/train_bundled/version_N)")
    ap.add_argument("--n-train-per-class", type=int, default=None, metavar="N",
                    help="training patches per class (photo patches only; default: the "
                         "bundled model's, 400 for the CNN and 800 for the ViT)")
    args = ap.parse_args()
    if args.n_train_per_class is not None and args.dataset != "photo_patches":
        ap.error("--n-train-per-class applies to --dataset photo_patches only (digits: the "
                 "whole sklearn set)")
    if args.n_train_per_class is not None and args.n_train_per_class < 1:
        ap.error(f"--n-train-per-class must be at least 1, got {args.n_train_per_class}")
    if args.widths is not None and args.arch != "cnn":
        ap.error("--widths applies to --arch cnn only")
    if args.install and (args.widths is not None or args.out_dir is not None):
        ap.error("--install writes the bundled checkpoint; it takes neither --widths nor "
                 "--out-dir")
    if args.install:
        out_dir = ASSETS
    elif args.out_dir is not None:
        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
    else:
        out_dir = next_version_dir("outputs/train_bundled")
    print(f"writing to {out_dir}", flush=True)
    L.seed_everything(0, workers=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.arch == "vit":
        if args.dataset != "photo_patches":
            raise SystemExit(f"--arch vit is trained on photo_patches only, got "
                             f"--dataset {args.dataset}")
        train_vit(args.epochs, out_dir, n_train_per_class=args.n_train_per_class or 800)
    else:
        train_cnn(args.dataset, args.epochs, out_dir,
                  tuple(args.widths) if args.widths is not None else None,
                  n_train_per_class=args.n_train_per_class or 400)


if __name__ == "__main__":
    main()
