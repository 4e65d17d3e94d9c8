"""Image grids and PNG files (one implementation for the whole package).

:func:`image_grid` tiles images; with ``labels`` / ``values`` it writes a caption under
every tile, with ``row_labels`` a caption left of every row, and with ``tile_size`` it
enlarges small tiles (nearest neighbour, an integer factor) so that a person can read the
grid. Without these arguments the output is the plain grid, pixel for pixel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

#: Caption text colour on a light (``pad_value >= 0.5``) / dark background.
_INK_ON_LIGHT, _INK_ON_DARK = 0.0, 1.0


def _font(size: int):  # noqa: ANN202 - PIL font object
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size only
        return ImageFont.load_default()


def _fit(text: str, width: int, font, draw) -> str:  # noqa: ANN001
    """``text`` cut (with ``...``) so that it is at most ``width`` pixels wide."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..." if text else ""


def _check_captions(name: str, captions: Sequence[object] | None, n: int, what: str) -> None:
    if captions is not None and len(captions) != n:
        raise ValueError(f"{name} has {len(captions)} entries but there are {n} {what}; "
                         f"pass one per {what[:-1]} or None")


def _format_value(v: object) -> str:
    if isinstance(v, str):
        return v
    f = float(v)  # type: ignore[arg-type]
    return "nan" if math.isnan(f) else f"{f:.4g}"


def image_grid(images: Tensor, nrow: int | None = None, padding: int = 2,
               pad_value: float = 1.0, labels: Sequence[str] | None = None,
               values: Sequence[float | str] | Tensor | None = None,
               row_labels: Sequence[str] | None = None, tile_size: int | None = None,
               font_size: int | None = None) -> Tensor:
    """Tile ``(N, C, H, W)`` images in [0, 1] into one ``(C, H', W')`` grid.

    Args:
        images: ``(N, C, H, W)`` in [0, 1]; non-finite values raise.
        nrow: images per row (default ``ceil(sqrt(N))``).
        padding: pixels between tiles and around the grid.
        pad_value: background value in [0, 1].
        labels: one caption per image (e.g. its unit ``"fc:3"``), written in a band under
            the tile; the grid grows by that band per row.
        values: one number (or string) per image, written on the caption's next line
            (e.g. the objective value; formatted ``.4g``).
        row_labels: one caption per row, written in a band left of the row.
        tile_size: enlarge every tile by the smallest integer factor (nearest neighbour)
            that makes its shorter side at least ``tile_size`` pixels (``None``: as given).
        font_size: caption font size in pixels (default: from the tile width, >= 10).

    Returns:
        ``(C, H', W')``: with no captions and no ``tile_size`` exactly the plain grid,
        ``H' = ncol·(H + padding) + padding``, ``W' = nrow·(W + padding) + padding``.
    """
    if images.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise ValueError("image grid received non-finite values")
    if tile_size is not None and tile_size < 1:
        raise ValueError(f"tile_size must be >= 1 pixel or None, got {tile_size}")
    n = images.shape[0]
    if isinstance(values, Tensor):
        values = values.detach().flatten().tolist()
    _check_captions("labels", labels, n, "images")
    _check_captions("values", values, n, "images")
    if tile_size is not None:
        factor = max(1, math.ceil(tile_size / min(images.shape[-2:])))
        if factor > 1:
            images = images.repeat_interleave(factor, -2).repeat_interleave(factor, -1)
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    _check_captions("row_labels", row_labels, ncol, "rows")
    lines = int(labels is not None) + int(values is not None)
    size = font_size or max(10, min(w // 10, 16))
    line_h = size + 3 if lines or row_labels is not None else 0
    band = lines * line_h + (2 if lines else 0)  # caption band under each tile
    left = 0
    if row_labels is not None:  # as wide as the longest row label, at most 2 tiles
        from PIL import Image, ImageDraw

        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        longest = max((probe.textlength(str(t), font=_font(size)) for t in row_labels),
                      default=0.0)
        left = min(int(math.ceil(longest)) + 6, max(2 * w, 4 * size))
    grid = images.new_full((c, ncol * (h + band + padding) + padding,
                            left + nrow * (w + padding) + padding), pad_value)
    for k in range(n):
        r, col = divmod(k, nrow)
        y, x = padding + r * (h + band + padding), left + padding + col * (w + padding)
        grid[:, y:y + h, x:x + w] = images[k]
    if not lines and row_labels is None:
        return grid

    from PIL import Image, ImageDraw

    mask = Image.new("L", (grid.shape[2], grid.shape[1]), 0)
    draw = ImageDraw.Draw(mask)
    font = _font(size)
    for k in range(n):
        r, col = divmod(k, nrow)
        y = padding + r * (h + band + padding) + h + 1
        x = left + padding + col * (w + padding)
        texts = ([labels[k]] if labels is not None else []) + (
            [_format_value(values[k])] if values is not None else [])
        for i, text in enumerate(texts):
            draw.text((x + 1, y + i * line_h), _fit(str(text), w - 2, font, draw), fill=255,
                      font=font)
    for r, text in enumerate(row_labels or []):
        y = padding + r * (h + band + padding) + max(0, (h - line_h) // 2)
        draw.text((2, y), _fit(str(text), left - 4, font, draw), fill=255, font=font)
    alpha = torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0).to(grid)
    ink = _INK_ON_LIGHT if pad_value >= 0.5 else _INK_ON_DARK
    return grid * (1 - alpha) + ink * alpha


def save_png(image: Tensor, path: str | Path) -> Path:
    """Save a ``(C, H, W)`` image in [0, 1] (C = 1 or 3) as an 8-bit PNG; returns the path."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    arr = arr[0] if arr.shape[0] == 1 else arr.permute(1, 2, 0)
    Image.fromarray(arr.numpy()).save(path)
    return path


def save_grid(images: Tensor, path: str | Path, nrow: int | None = None,
              labels: Sequence[str] | None = None,
              values: Sequence[float | str] | Tensor | None = None,
              row_labels: Sequence[str] | None = None,
              tile_size: int | None = None) -> Path:
    """:func:`image_grid` (same caption / size arguments) then :func:`save_png`."""
    return save_png(image_grid(images.detach().float().cpu(), nrow=nrow, labels=labels,
                               values=values, row_labels=row_labels, tile_size=tile_size),
                    path)
