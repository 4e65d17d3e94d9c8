"""Explicit input preprocessing, one representation for every part of the library.

Images everywhere are ``(B, 3, H, W)`` in [0, 1] RGB. A model that expects normalized
input gets a :class:`Normalize` (``(x − mean) / std``) from exactly one of: the user's
``mean``/``std``, a timm model's ``pretrained_cfg`` or torchvision weights
(:func:`preprocessing_from`). Nothing is guessed from a model's name.

- Functions that run a model on images take ``normalize=`` (``None``, a ``(mean, std)``
  pair or a module) and resolve it with :func:`as_normalize`.
- A model that must normalize itself (adversarial training, where the perturbation lives
  in pixel space) is wrapped in :class:`NormalizedModel`, or, to keep the user's layer
  names, normalizes inside :func:`normalized_input` (a forward pre-hook).
- :func:`check_mean_std` is the one check that mean and std come together.
"""


from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lightning_fv.utils.device import model_device

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


def check_mean_std(mean: Sequence[float] | None, std: Sequence[float] | None
                   ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` as tuples, or ``None`` when both are ``None``; one without the other
    raises, naming what was given."""
    if (mean is None) != (std is None):
        raise ValueError(
            f"give both mean and std for the input normalization, or neither; got "
            f"mean={None if mean is None else list(mean)}, "
            f"std={None if std is None else list(std)}"
        )
    if mean is None:
        return None
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)  # type: ignore[union-attr]


NormalizeLike = nn.Module | tuple[Sequence[float], Sequence[float]] | None


def as_normalize(normalize: NormalizeLike | Callable[[Tensor], Tensor],
                 device: torch.device | str | None = None) -> nn.Module | None:
    """Resolve a ``normalize=`` argument: ``None`` stays ``None``; a module is moved to
    ``device``; a ``(mean, std)`` pair becomes a :class:`Normalize`; a plain callable is
    wrapped in a module."""
    if normalize is None:
        return None
    if isinstance(normalize, nn.Module):
        return normalize.to(device) if device is not None else normalize
    if isinstance(normalize, (tuple, list)) and len(normalize) == 2:
        mean, std = normalize
        m = Normalize(mean, std)
        return m.to(device) if device is not None else m
    if callable(normalize):
        return _Lambda(normalize)
    raise TypeError(
        f"normalize must be None, a (mean, std) pair or a module, got {type(normalize).__name__}"
    )


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)


class NormalizedModel(nn.Module):
    """``backbone(normalize(x))`` for ``(B, 3, H, W)`` images in [0, 1] RGB.

    Used where the model must take pixel-space input (PGD perturbs pixels). The
    backbone's layer names are reached as ``backbone.<name>``; :meth:`unwrap` returns it.
    """

    def __init__(self, backbone: nn.Module, normalize: nn.Module | None = None) -> None:
        super().__init__()
        self.normalize = normalize if normalize is not None else nn.Identity()
        self.backbone = backbone

    def forward(self, x: Tensor) -> Tensor:
        return self.backbone(self.normalize(x))

    def unwrap(self) -> nn.Module:
        """The backbone, whose layer names are the user's model's names."""
        return self.backbone


@contextmanager
def normalized_input(model: nn.Module, normalize: NormalizeLike) -> Iterator[nn.Module]:
    """Inside the block, ``model`` normalizes its own first input (a forward pre-hook), so
    every pixel-space caller can use it and its layer names stay the user's; the hook is
    removed on exit (also on error). ``normalize=None`` changes nothing."""
    norm = as_normalize(normalize, model_device(model))
    if norm is None:
        yield model
        return

    def hook(_m: nn.Module, args: tuple) -> tuple:
        return (norm(args[0]), *args[1:])

    handle = model.register_forward_pre_hook(hook)
    try:
        yield model
    finally:
        handle.remove()
