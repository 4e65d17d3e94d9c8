"""Transformation robustness (Lucent's ``transform``), batched and reproducible.

Every geometric transform here is an affine map of pixel coordinates. A chain of them is
composed into one ``(B, 3, 3)`` matrix per step and applied with a single
``grid_sample`` call, so a batch in which every sample has its own random jitter, scale
and rotation stays one tensor, the whole chain is differentiable, and all randomness
comes from per-sample ``torch.Generator`` draws made before optimization starts.

Models that need one input size (vision transformers: a fixed patch grid) get it from
:func:`fit_to_input`, which resizes the transformed images to :func:`model_input_size`
(Lucent's ``fixed_image_size``).

Differences from Lucent 0.1.8, all for batching: ``random_scale`` zooms about the image
centre and keeps the canvas size (Lucent resizes the canvas), and rotations are applied
with bilinear ``grid_sample`` instead of kornia (same interpolation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class AffineTransform:
    """Base class: a random affine map from an output canvas to an input canvas.

    Subclasses define ``n_random`` (uniform draws per step), :meth:`out_size` and
    :meth:`matrix`, the ``(B, 3, 3)`` map from output pixel coordinates ``(x, y, 1)`` to
    input pixel coordinates, given ``u`` ``(B, n_random)`` uniform draws in [0, 1).
    """

    n_random: int = 0

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return size

    def matrix(self, u: Tensor, size: tuple[int, int]) -> Tensor:
        raise TypeError(f"{type(self).__name__} must define matrix()")


def _eye(b: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    return torch.eye(3, device=device, dtype=dtype).expand(b, 3, 3).clone()


_VALUES: dict[tuple[tuple[float, ...], torch.device, torch.dtype], Tensor] = {}


def _choice(u: Tensor, values: Sequence[float]) -> Tensor:
    """Pick ``values[floor(u·len)]`` per sample (a uniform choice from a list)."""
    key = (tuple(float(v) for v in values), u.device, u.dtype)
    if key not in _VALUES:  # one host-to-device copy per list, not per step
        _VALUES[key] = torch.as_tensor(key[0], dtype=u.dtype, device=u.device)
    v = _VALUES[key]
    idx = (u * len(v)).long().clamp_max(len(v) - 1)
    return v[idx]


@dataclass
class pad(AffineTransform):  # noqa: N801 (Lucent's name)
    """Pad ``width`` pixels on every side (``mode="constant"`` with ``value``, or
    ``"reflection"``/``"border"``)."""

    width: int
    mode: str = "constant"
    value: float = 0.5

    def __post_init__(self) -> None:
        if self.width < 0:
            raise ValueError(f"pad width must be >= 0, got {self.width}")
        if self.mode not in ("constant", "reflection", "border"):
            raise ValueError(f"unknown pad mode {self.mode!r}; valid: constant, reflection, border")

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return size[0] + 2 * self.width, size[1] + 2 * self.width

    def matrix(self, u: Tensor, size: tuple[int, int]) -> Tensor:
        m = _eye(u.shape[0], u.device, u.dtype)
        m[:, 0, 2] = -self.width
        m[:, 1, 2] = -self.width
        return m


@dataclass
class jitter(AffineTransform):  # noqa: N801
    """Random crop that shrinks each side by ``d`` pixels at an integer offset in [0, d)."""

    d: int
    n_random = 2

    def __post_init__(self) -> None:
        if self.d < 1:
            raise ValueError(f"jitter d must be >= 1, got {self.d}")

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return size[0] - self.d, size[1] - self.d

    def matrix(self, u: Tensor, size: tuple[int, int]) -> Tensor:
        m = _eye(u.shape[0], u.device, u.dtype)
        m[:, 0, 2] = (u[:, 0] * self.d).floor().clamp_max(self.d - 1)
        m[:, 1, 2] = (u[:, 1] * self.d).floor().clamp_max(self.d - 1)
        return m


@dataclass
class random_scale(AffineTransform):  # noqa: N801
    """Zoom about the centre by a factor chosen uniformly from ``scales``."""

    scales: Sequence[float]
    n_random = 1

    def matrix(self, u: Tensor, size: tuple[int, int]) -> Tensor:
        s = _choice(u[:, 0], self.scales)
        h, w = size
        cx, cy = (w - 1) / 2, (h - 1) / 2
        m = _eye(u.shape[0], u.device, u.dtype)
        m[:, 0, 0] = 1 / s
        m[:, 1, 1] = 1 / s
        m[:, 0, 2] = cx - cx / s
        m[:, 1, 2] = cy - cy / s
        return m


@dataclass
class random_rotate(AffineTransform):  # noqa: N801
    """Rotate about the centre by an angle (degrees, positive = counter-clockwise as
    displayed) chosen uniformly from ``angles``."""

    angles: Sequence[float]
    n_random = 1

    def matrix(self, u: Tensor, size: tuple[int, int]) -> Tensor:
        a = -_choice(u[:, 0], self.angles) * (math.pi / 180)  # positive = counter-clockwise
        h, w = size
        cx, cy = (w - 1) / 2, (h - 1) / 2
        c, s = torch.cos(a), torch.sin(a)
        m = _eye(u.shape[0], u.device, u.dtype)
        m[:, 0, 0], m[:, 0, 1] = c, s
        m[:, 1, 0], m[:, 1, 1] = -s, c
        m[:, 0, 2] = cx - c * cx - s * cy
        m[:, 1, 2] = cy + s * cx - c * cy
        return m


@dataclass
class center_crop(AffineTransform):  # noqa: N801
    """Crop the central ``h × w`` window (Lucent's ``center_crop``)."""

    h: int
    w: int | None = None

    def out_size(self, size: tuple[int, int]) -> tuple[int, int]:
        return self.h, self.w or self.h

    def matrix(self, u: Tensor, size: tuple[int, int]) -> Tensor:
        oh, ow = self.out_size(size)
        m = _eye(u.shape[0], u.device, u.dtype)
        m[:, 0, 2] = (size[1] - ow) // 2
        m[:, 1, 2] = (size[0] - oh) // 2
        return m


def standard_transforms() -> list[AffineTransform]:
    """Lucent 0.1.8's ``standard_transforms``: pad 12 (constant 0.5), jitter 8, scale
    1 ± 0.1 in 11 steps, rotate −10…10° (0° five times more likely), jitter 4."""
    return [
        pad(12, mode="constant", value=0.5),
        jitter(8),
        random_scale([1 + (i - 5) / 50.0 for i in range(11)]),
        random_rotate(list(range(-10, 11)) + 5 * [0]),
        jitter(4),
    ]


TransformLike = AffineTransform | Callable[[Tensor], Tensor]


class TransformChain:
    """A list of transforms with per-sample randomness drawn up front.

    Consecutive :class:`AffineTransform` s are fused into one ``grid_sample``; any other
    callable ``(B, C, H, W) → (B, C, H', W')`` is applied as is (it must be deterministic
    or draw from its own generator).
    """

    def __init__(self, transforms: Sequence[TransformLike] | None) -> None:
        self.transforms = list(transforms or [])
        self.n_random = sum(getattr(t, "n_random", 0) for t in self.transforms)

    def out_size(self, size: tuple[int, int]) -> tuple[int, int] | None:
        """``(H, W)`` of the images the chain makes from ``size`` images; ``None`` when a
        non-affine transform makes it unknowable without running it."""
        for t in self.transforms:
            if not isinstance(t, AffineTransform):
                return None
            size = t.out_size(size)
        return size

    def draw(self, generators: Sequence[torch.Generator], steps: int) -> Tensor:
        """Uniform draws ``(steps, B, n_random)``, one generator per sample."""
        if self.n_random == 0:
            return torch.zeros(steps, len(generators), 0)
        return torch.stack(
            [torch.rand(steps, self.n_random, generator=g) for g in generators], dim=1
        )

    def __call__(self, images: Tensor, u: Tensor | None = None) -> Tensor:
        """Apply the chain to ``images`` ``(B, C, H, W)`` with draws ``u`` ``(B, n_random)``."""
        b = images.shape[0]
        if u is None:
            u = torch.rand(b, self.n_random)
        u = u.to(device=images.device, dtype=torch.float32)
        x, col, group = images, 0, []
        for t in self.transforms + [None]:
            if isinstance(t, AffineTransform):
                group.append((t, u[:, col:col + t.n_random]))
                col += t.n_random
                continue
            if group:
                x = _apply_affine(x, group)
                group = []
            if t is not None:
                x = t(x)
        return x


def _apply_affine(x: Tensor, group: list[tuple[AffineTransform, Tensor]]) -> Tensor:
    b, _, h, w = x.shape
    size = (h, w)
    total = _eye(b, x.device, torch.float32)
    fill = None
    mode = "zeros"
    for t, ut in group:
        total = total @ t.matrix(ut, size)  # maps the newest canvas to the input image
        if isinstance(t, pad):
            if t.mode == "constant":
                fill = t.value if fill is None else fill
            else:
                mode = t.mode
        size = t.out_size(size)
    oh, ow = size
    if oh < 1 or ow < 1:
        raise ValueError(f"transforms shrink a {(h, w)} image to an empty {size} canvas")
    ys, xs = torch.meshgrid(
        torch.arange(oh, device=x.device, dtype=torch.float32),
        torch.arange(ow, device=x.device, dtype=torch.float32),
        indexing="ij",
    )
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1).reshape(1, -1, 3)
    src = pts @ total.transpose(1, 2)  # (B, oh*ow, 3) input pixel coordinates
    gx = (2 * src[..., 0] + 1) / w - 1
    gy = (2 * src[..., 1] + 1) / h - 1
    grid = torch.stack([gx, gy], dim=-1).reshape(b, oh, ow, 2).to(x.dtype)
    if mode == "zeros" and fill:
        return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros",
                             align_corners=False) + fill
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=mode, align_corners=False)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    vals = [int(v) for v in size]
    if len(vals) == 3:  # (C, H, W) as timm's pretrained_cfg["input_size"]
        vals = vals[1:]
    if len(vals) != 2 or min(vals) < 1:
        raise ValueError(f"an input size is H, (H, W) or (C, H, W) with positive sides, "
                         f"got {size!r}")
    return vals[0], vals[1]


def model_input_size(model: nn.Module) -> tuple[int, int] | None:
    """The ``(H, W)`` input a model requires, or ``None`` when it takes any size.

    Read from what the model states, never guessed: a ``patch_embed.img_size`` that timm
    enforces (``strict_img_size`` without ``dynamic_img_size``; it wins, as it is what the
    built module checks even when ``img_size=`` overrode the config), else timm's
    ``pretrained_cfg`` (or ``default_cfg``) ``input_size`` when it sets
    ``fixed_input_size``. A model of any other kind takes the image as rendered.
    """
    if getattr(model, "dynamic_img_size", False):
        return None
    pe = getattr(model, "patch_embed", None)
    size = getattr(pe, "img_size", None)
    if size is not None and getattr(pe, "strict_img_size", False):
        return _pair(size)
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and cfg.get("fixed_input_size") and cfg.get("input_size"):
            return _pair(cfg["input_size"])
    return None


def resolve_input_size(model: nn.Module, input_size: int | Sequence[int] | str | None
                       ) -> tuple[int, int] | None:
    """``input_size`` of :func:`~lightning_fv.optvis.render.render` as ``(H, W)`` or
    ``None``: ``"auto"`` reads :func:`model_input_size`, ``None`` turns resizing off."""
    if input_size is None:
        return None
    if isinstance(input_size, str):
        if input_size != "auto":
            raise ValueError(f"input_size must be 'auto', None, H or (H, W), got {input_size!r}")
        return model_input_size(model)
    return _pair(input_size)


def fit_to_input(images: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Images ``(B, C, H, W)`` resized (bilinear, differentiable) to ``size = (H', W')``
    when they differ; unchanged when ``size`` is ``None`` (Lucent's ``fixed_image_size``)."""
    if size is None or tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=tuple(size), mode="bilinear", align_corners=False)
