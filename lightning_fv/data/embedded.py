"""Data sets built from images that installed packages ship: no download needed.

- Photo patches: random crops of the colour photos in ``skimage.data`` and
  ``sklearn.datasets.load_sample_images``; the label is the source photo. Each photo is
  resized to a short side of ``resize`` pixels and cut into a 4×4 grid of cells; four
  cells (one per row and column) are validation cells, the others training cells, and a
  crop always lies inside one cell, so training and validation pixels never overlap.
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
