"""Tiny random LightningDiT pipelines for the invariant-set tests (milliseconds on a CPU)."""

from __future__ import annotations

import torch
from torch import nn

from lightning_fv.diffusion import LatentDiffusionPipeline, LightningDiT, ResizeAutoencoder
from lightning_fv.diffusion.pipeline import SamplerConfig


def make_pipeline(seed: int = 0, size: int = 8, factor: int = 1, num_steps: int = 3
                  ) -> LatentDiffusionPipeline:
    """A 1-block LightningDiT on ``3×size×size`` latents with *non-zero* output layers (the
    release initialisation zeroes them, which would make the sampler the identity)."""
    torch.manual_seed(seed)
    dit = LightningDiT(input_size=size, patch_size=2, in_channels=3, hidden_size=32, depth=1,
                       num_heads=2, num_classes=4, use_swiglu=True, use_rmsnorm=True)
    with torch.no_grad():
        for m in dit.modules():
            if isinstance(m, nn.Linear) and m.weight.abs().sum() == 0:
                m.weight.normal_(0, 0.05)
    return LatentDiffusionPipeline(dit.eval(), ResizeAutoencoder(factor, 3),
                                   sampler=SamplerConfig(num_steps=num_steps)).eval()


class TinyClassifier(nn.Module):
    """conv(3→4) → relu → mean pool → fc(4→3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


def classifier_data(n: int = 16, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable toy classification data: class-dependent red channel."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    x = torch.rand(n, 3, size, size, generator=g) * 0.5
    x[:, 0] += 0.12 * y.view(-1, 1, 1).float()
    return x, y
