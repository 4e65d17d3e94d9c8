"""Explicit input normalization: never guessed from a model's name."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x − mean) / std`` per channel for ``(B, C, H, W)`` images in [0, 1] RGB.

    Mean and std are buffers, so they follow the model's device and dtype.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.shape != std_t.shape or mean_t.dim() != 1:
            raise ValueError(
                f"mean {list(mean)} and std {list(std)} must be 1-D sequences of equal length"
            )
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(
                f"expected images of shape (B, {self.mean.shape[1]}, H, W), got {tuple(x.shape)}"
            )
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def preprocessing_from(source: object) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Read ``(mean, std)`` from a timm model's ``pretrained_cfg`` or torchvision weights.

    ``source`` is a timm model (with ``pretrained_cfg``/``default_cfg``), a torchvision
    ``WeightsEnum`` member (its ``transforms()``), or a ``(mean, std)`` pair. Anything else
    raises: preprocessing must be stated, not guessed.
    """
    if isinstance(source, tuple) and len(source) == 2:
        return tuple(source[0]), tuple(source[1])  # type: ignore[return-value]
    cfg = getattr(source, "pretrained_cfg", None) or getattr(source, "default_cfg", None)
    if isinstance(cfg, dict) and "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    transforms = getattr(source, "transforms", None)
    if callable(transforms):
        t = transforms()
        if hasattr(t, "mean") and hasattr(t, "std"):
            return tuple(t.mean), tuple(t.std)
    raise ValueError(
        f"cannot read preprocessing from {type(source).__name__}; pass mean/std explicitly, "
        "a timm model with pretrained_cfg, or torchvision weights"
    )
