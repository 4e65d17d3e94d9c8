"""Image grids and PNG files (one implementation for the whole package)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 2,
               pad_value: float = 1.0) -> Tensor:
    """Tile ``(N, C, H, W)`` images in [0, 1] into one ``(C, H', W')`` grid.

    ``nrow`` images per row (default ``ceil(sqrt(N))``). Non-finite values raise.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("image grid received non-finite values")
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = images.new_full((c, ncol * (h + padding) + padding, nrow * (w + padding) + padding),
                           pad_value)
    for k in range(n):
        r, col = divmod(k, nrow)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[:, y:y + h, x:x + w] = images[k]
    return grid


def save_png(image: Tensor, path: str | Path) -> Path:
    """Save a ``(C, H, W)`` image in [0, 1] (C = 1 or 3) as an 8-bit PNG; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    arr = arr[0] if arr.shape[0] == 1 else arr.permute(1, 2, 0)
    Image.fromarray(arr.numpy()).save(path)
    return path


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """:func:`image_grid` then :func:`save_png`."""
    return save_png(image_grid(images.detach().float().cpu(), nrow=nrow), path)
