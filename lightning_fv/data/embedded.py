"""Data sets built from images that installed packages ship: no download needed.

- Photo patches: random crops of the colour photos in ``skimage.data`` and
  ``sklearn.datasets.load_sample_images``; the label is the source photo. Each photo is
  resized to a short side of ``resize`` pixels and cut into a 4×4 grid of cells; four
  cells (one per row and column) are validation cells, the others training cells, and a
  crop always lies inside one cell, so training and validation pixels never overlap.
- Shifted photo patches (:func:`photo_patches_shifted`): an ImageNet-V2-like out-of-
  distribution set for `dont-trust-your-eyes…` App. E — the same ten classes from the same
  photos' validation cells, under a mild shift of scale and colour.
- Digits: ``sklearn.datasets.load_digits`` (8×8, 16 grey levels), upsampled bilinearly to
  ``size`` and repeated to 3 channels.

All tensors are ``(N, 3, H, W)`` float32 RGB in [0, 1] with int64 labels ``(N,)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

PHOTO_CLASSES = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "china",
    "flower",
    "brick",
)
_VAL_CELLS = {(0, 1), (1, 3), (2, 0), (3, 2)}


def _load_photo(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
    img = np.array(img, copy=True)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    return img[..., :3]


def load_photos(resize: int = 256) -> list[Tensor]:
    """The photos of :data:`PHOTO_CLASSES` as ``(3, H, W)`` tensors with short side ``resize``."""
    out = []
    for name in PHOTO_CLASSES:
        img = torch.from_numpy(_load_photo(name)).permute(2, 0, 1).float() / 255.0
        h, w = img.shape[-2:]
        s = resize / min(h, w)
        size = (max(resize, round(h * s)), max(resize, round(w * s)))
        img = F.interpolate(img[None], size=size, mode="bilinear", antialias=True,
                            align_corners=False)[0]
        out.append(img.clamp(0, 1))
    return out


def photo_patches(
    split: str = "train",
    n_per_class: int = 200,
    size: int = 64,
    resize: int = 256,
    seed: int = 0,
    photos: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Random ``size``×``size`` crops: ``(N, 3, size, size)`` images and ``(N,)`` labels.

    ``split`` is ``"train"`` or ``"val"``; crops of the two splits come from disjoint grid
    cells of each photo. Training crops are randomly flipped horizontally. The result is a
    deterministic function of the arguments.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    photos = load_photos(resize) if photos is None else photos
    g = torch.Generator().manual_seed(seed * 2 + (split == "val"))
    xs, ys = [], []
    for label, img in enumerate(photos):
        h, w = img.shape[-2:]
        ch, cw = h // 4, w // 4
        if min(ch, cw) < size:
            raise ValueError(f"crop size {size} exceeds grid cell {(ch, cw)}; raise resize")
        cells = [
            (i, j) for i in range(4) for j in range(4)
            if ((i, j) in _VAL_CELLS) == (split == "val")
        ]
        for _ in range(n_per_class):
            i, j = cells[int(torch.randint(len(cells), (1,), generator=g))]
            r = i * ch + int(torch.randint(ch - size + 1, (1,), generator=g))
            c = j * cw + int(torch.randint(cw - size + 1, (1,), generator=g))
            crop = img[:, r:r + size, c:c + size]
            if split == "train" and bool(torch.rand(1, generator=g) < 0.5):
                crop = crop.flip(-1)
            xs.append(crop)
            ys.append(label)
    return torch.stack(xs).contiguous(), torch.tensor(ys, dtype=torch.long)


def photo_patches_shifted(
    n_per_class: int = 60,
    size: int = 64,
    resize: int = 256,
    seed: int = 0,
    scale: tuple[float, float] = (0.75, 0.95),
    brightness: float = 0.15,
    contrast: float = 0.15,
    saturation: float = 0.15,
    photos: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Photo patches under a mild distribution shift, like ImageNet-V2 for ImageNet (App. E):
    the same classes, other samples, no new content.

    Each crop covers ``s·size`` pixels (``s`` uniform in ``scale``; below 1 = zoomed in
    by ``1/s``, with the softness of upsampling) of a *validation* cell of its photo, is
    resized (bilinear, antialiased) to ``size``, and its
    colours are jittered: brightness ``·(1 ± brightness)``, contrast about the crop's mean
    ``·(1 ± contrast)``, saturation about its grey value ``·(1 ± saturation)`` (each factor
    uniform), then clipped to [0, 1]. Training cells are never used, so a model trained on
    :func:`photo_patches` ``"train"`` has not seen these pixels.

    Args:
        n_per_class: crops per photo.
        size: output side in pixels.
        resize: short side the photos are resized to (as :func:`photo_patches`).
        seed: seed of the crops and jitter.
        scale: range of the crop side relative to ``size`` (``1`` = the same scale as
            :func:`photo_patches`).
        brightness, contrast, saturation: jitter amplitudes in [0, 1).

    Returns:
        ``(N, 3, size, size)`` images in [0, 1] and ``(N,)`` labels (the photo index).
    """
    lo, hi = scale
    if not 0 < lo <= hi:
        raise ValueError(f"scale must be (lo, hi) with 0 < lo <= hi, got {scale!r}")
    for name, v in (("brightness", brightness), ("contrast", contrast),
                    ("saturation", saturation)):
        if not 0 <= v < 1:
            raise ValueError(f"{name} must be in [0, 1), got {v!r}")
    photos = load_photos(resize) if photos is None else photos
    g = torch.Generator().manual_seed(1000 + seed)

    def u(a: float, b: float) -> float:
        return a + (b - a) * float(torch.rand(1, generator=g))

    xs, ys = [], []
    for label, img in enumerate(photos):
        h, w = img.shape[-2:]
        ch, cw = h // 4, w // 4
        cells = sorted(_VAL_CELLS)
        for _ in range(n_per_class):
            side = int(round(u(lo, hi) * size))
            if side > min(ch, cw):
                raise ValueError(f"crop side {side} (scale {scale} × size {size}) exceeds the "
                                 f"grid cell {(ch, cw)}; raise resize or lower scale")
            i, j = cells[int(torch.randint(len(cells), (1,), generator=g))]
            r = i * ch + int(torch.randint(ch - side + 1, (1,), generator=g))
            c = j * cw + int(torch.randint(cw - side + 1, (1,), generator=g))
            crop = img[None, :, r:r + side, c:c + side]
            if side != size:
                crop = F.interpolate(crop, size=(size, size), mode="bilinear",
                                     align_corners=False, antialias=True)
            crop = crop[0] * u(1 - brightness, 1 + brightness)
            crop = crop.mean() + (crop - crop.mean()) * u(1 - contrast, 1 + contrast)
            grey = crop.mean(0, keepdim=True)
            crop = grey + (crop - grey) * u(1 - saturation, 1 + saturation)
            xs.append(crop.clamp(0, 1))
            ys.append(label)
    return torch.stack(xs).contiguous(), torch.tensor(ys, dtype=torch.long)


def digits(split: str = "train", size: int = 32, val_fraction: float = 0.2,
           seed: int = 0) -> tuple[Tensor, Tensor]:
    """sklearn's handwritten digits as ``(N, 3, size, size)`` in [0, 1] and labels ``(N,)``.

    A fixed random permutation (``seed``) splits the 1797 images into train/val.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 16.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x.clamp(0, 1).repeat(1, 3, 1, 1)
    y = torch.from_numpy(d.target).long()
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(val_fraction * len(y)))
    idx = perm[:n_val] if split == "val" else perm[n_val:]
    return x[idx].contiguous(), y[idx]


EMBEDDED: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    "photo_patches": photo_patches,
    "digits": digits,
}
