"""Run by test_robust_classifier.py: a short RobustClassifier fit on 1 or 2 CPU processes."""

import json
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.models import SmallCNN
from lightning_fv.modules.robust_classifier import RobustClassifier


def main(out: str, devices: int) -> None:
    L.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(32, 3, 16, 16, generator=g), torch.randint(0, 3, (32,), generator=g)
    dl = DataLoader(TensorDataset(x, y), batch_size=8)
    module = RobustClassifier(SmallCNN(num_classes=3, widths=(4, 6, 8, 8)), num_classes=3,
                              norm="linf", eps=0.03, steps=2, lr=0.05)
    trainer = L.Trainer(accelerator="cpu", devices=devices, max_epochs=1,
                        strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False)
    trainer.fit(module, dl, dl)
    checksum = sum(float(p.double().sum()) for p in module.parameters())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    with open(f"{out}/rank{trainer.global_rank}.json", "w") as f:
        json.dump({"checksum": checksum, "metrics": metrics, "steps": trainer.global_step,
                   "world": trainer.world_size}, f)
    # rank 0 (the launching process) must not exit before rank 1 has written its file:
    # the test reads both as soon as rank 0 returns
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
