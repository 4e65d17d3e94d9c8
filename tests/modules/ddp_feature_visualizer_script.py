"""Run by test_feature_visualizer.py: a FeatureVisualizer sweep on 1 or 2 CPU processes."""

import sys

import lightning as L
import torch

from lightning_fv.models import SmallCNN
from lightning_fv.modules import FeatureVisualizer


def main(out: str, devices: int) -> None:
    torch.manual_seed(0)
    net = SmallCNN(num_classes=5, widths=(4, 6, 8, 8))
    fv = FeatureVisualizer(net, units=["fc:*", "block2:0-1"], image_size=16, thresholds=[3],
                           batch_size=2, output_dir=out)
    trainer = L.Trainer(accelerator="cpu", devices=devices,
                        strategy="ddp" if devices > 1 else "auto", logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(fv, return_predictions=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
