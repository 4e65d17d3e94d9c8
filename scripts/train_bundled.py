"""Reproduce the bundled checkpoints in lightning_fv/assets/.

    python scripts/train_bundled.py --dataset photo_patches   # ~5 min on 2 CPU cores
    python scripts/train_bundled.py --dataset digits

Trains :class:`lightning_fv.models.SmallCNN` with :class:`ImageClassifier` (SGD, cosine
schedule, seed 0) and writes ``small_cnn_<dataset>.safetensors`` with the config and the
validation accuracy in the metadata.
"""

from __future__ import annotations

import argparse
import time

import lightning as L
import torch

from lightning_fv.data import DigitsDataModule, PhotoPatchesDataModule
from lightning_fv.models import SmallCNN
from lightning_fv.models.registry import ASSETS, BUNDLED, save_small_cnn
from lightning_fv.modules.classifier import ImageClassifier


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", choices=sorted(BUNDLED), default="photo_patches")
    ap.add_argument("--epochs", type=int, default=None)
    args = ap.parse_args()
    L.seed_everything(0, workers=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.dataset == "photo_patches":
        dm = PhotoPatchesDataModule(batch_size=64, n_train_per_class=400, n_val_per_class=80)
        widths, size, epochs = (32, 64, 96, 128), 64, args.epochs or 14
    else:
        dm = DigitsDataModule(batch_size=64)
        widths, size, epochs = (16, 32, 48, 64), 32, args.epochs or 10
    net = SmallCNN(num_classes=10, widths=widths)
    module = ImageClassifier(net, num_classes=10, lr=0.05, max_epochs=epochs)
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False,
                        enable_checkpointing=False, deterministic=True)
    t0 = time.time()
    trainer.fit(module, datamodule=dm)
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/acc"]
    minutes = (time.time() - t0) / 60
    out = ASSETS / f"{BUNDLED[args.dataset]}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_small_cnn(net.eval(), out, extra={
        "val_acc": round(float(val), 4), "dataset": args.dataset, "input_size": [3, size, size],
        "classes": list(dm.classes), "epochs": epochs, "train_minutes": round(minutes, 1),
    })
    print(f"{args.dataset}: val acc {val:.4f} after {epochs} epochs ({minutes:.1f} min) -> {out}")


if __name__ == "__main__":
    main()
