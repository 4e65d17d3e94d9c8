"""Tiny training set-up shared by the callback tests (and the DDP script)."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lightning_fv.callbacks.feature_visualization import FeatureVisualizationCallback
from lightning_fv.callbacks.path_linearity import PathLinearityCallback
from lightning_fv.callbacks.sanity_check import SanityCheckCallback
from lightning_fv.models import SmallCNN
from lightning_fv.modules.classifier import ImageClassifier

FV_UNITS = ["block2:0", "block2:1", "fc:1", "fc:2"]
LAYERS = ["block1", "block2", "block3", "block4", "fc"]


def data(n: int = 40, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 4
    x = torch.rand(n, 3, size, size, generator=g) * 0.5
    x[:, 0] += 0.12 * y.view(-1, 1, 1).float()  # class-dependent colour: learnable
    return x, y


def loaders(batch_size: int = 10) -> tuple[DataLoader, DataLoader]:
    x, y = data()
    ds = TensorDataset(x, y)
    return (DataLoader(ds, batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(0)),
            DataLoader(ds, batch_size=batch_size))


def module() -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(SmallCNN(num_classes=4, widths=(4, 6, 8, 8)), num_classes=4,
                           lr=0.05, max_epochs=2)


def trained_module(steps: int = 40) -> ImageClassifier:
    """:func:`module` after ``steps`` full-batch SGD steps (deterministic, no Trainer)."""
    m = module()
    x, y = data()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
    m.zero_grad(set_to_none=True)
    return m


def callbacks(steps: int = 3, tile_size: int | None = None) -> list[L.Callback]:
    """The three callbacks; ``tile_size=None`` logs the raw-pixel grids whose exact sizes
    the logging tests check (the default of the callback is a captioned, enlarged grid)."""
    return [
        FeatureVisualizationCallback(FV_UNITS, module="model", image_size=16, steps=steps,
                                     tile_size=tile_size),
        SanityCheckCallback(LAYERS, module="model", steps=steps, strides=(1, 1, 1)),
        PathLinearityCallback(["block2:1", "fc:1"], module="model", num_images=2,
                              steps=steps + 1),
    ]


def trainer(**kw: object) -> L.Trainer:
    base = dict(max_epochs=2, accelerator="cpu", devices=1, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, logger=False,
                deterministic=True)
    base.update(kw)
    return L.Trainer(**base)
