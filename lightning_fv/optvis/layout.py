"""Activation layouts: where the feature channels of a layer's output are, in one place.

A layer's output is read in one of four layouts:

- ``"conv"``: ``(B, C, H, W)`` feature maps (also ``(B, C, L)`` 1-D maps, read as
  ``(B, C, 1, L)``);
- ``"tokens"``: ``(B, N, C)`` token sequences, the first ``num_prefix_tokens`` of them
  prefix tokens (CLS, registers, distillation: timm's ``num_prefix_tokens``), the rest the
  patch tokens of a ``grid = (rows, cols)`` patch grid in row-major order;
- ``"channels_last"``: ``(B, H, W, C)`` maps (Swin stages, ConvNeXt MLPs in timm);
- ``"vector"``: ``(B, C)``.

:func:`channels_first` turns every layout into ``(B, C, H, W)`` (``(B, C)`` for vectors), the
one definition every objective, recorder and metric reads: a unit ``layer:c`` is feature
channel ``c`` averaged over the spatial positions or patch tokens (prefix tokens excluded),
``layer:c@r,k`` one patch-grid cell and ``layer:c@cls`` a prefix token
(:func:`prefix_tokens`, :func:`prefix_index`).

:func:`detect_layout` decides the layout of one recorded tensor from what is reliable: a
layout the user states (``layouts={"blocks.5": "tokens"}``, or a model attribute
``fv_layouts`` of the same form), the module type of a leaf layer (``Conv2d`` → conv,
``Linear``/``LayerNorm`` on a 4-D tensor → channels-last), the output rank and which
dimensions are spatial (a square ``H == W`` beside a different ``C``), timm's
``output_fmt`` and, for tokens, timm's ``num_prefix_tokens`` and ``patch_embed.grid_size``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

#: The layout kinds, with the shape each reads.
LAYOUTS: dict[str, str] = {
    "conv": "(B, C, H, W)",
    "tokens": "(B, N, C)",
    "channels_last": "(B, H, W, C)",
    "vector": "(B, C)",
}
_ALIASES = {"bchw": "conv", "nchw": "conv", "channels_first": "conv", "bnc": "tokens",
            "nlc": "tokens", "bhwc": "channels_last", "nhwc": "channels_last",
            "bc": "vector", "nc": "vector"}

#: Model attribute holding user-stated layouts ``{layer name: layout}``.
MODEL_ATTRIBUTE = "fv_layouts"


@dataclass(frozen=True)
class Layout:
    """How to read one layer's output (see the module docstring).

    Attributes:
        kind: one of :data:`LAYOUTS`.
        num_prefix_tokens: tokens before the patch tokens (``"tokens"`` only); ``None`` in a
            user-stated layout means "read it from the model".
        grid: patch grid ``(rows, cols)`` of the patch tokens (``"tokens"`` only); ``None``
            means a square grid (or one row when the count is not a square).
        prefix_names: names of the prefix tokens (``("cls",)``, ``("cls", "reg0", …)``),
            addressable as ``@cls``, ``@reg0``; ``@prefix<k>`` always addresses the ``k``-th.
    """

    kind: str
    num_prefix_tokens: int | None = 0
    grid: tuple[int, int] | None = None
    prefix_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in LAYOUTS:
            raise ValueError(f"unknown layout {self.kind!r}; valid: {list(LAYOUTS)}")
        if self.num_prefix_tokens is not None and self.num_prefix_tokens < 0:
            raise ValueError(f"num_prefix_tokens must be >= 0, got {self.num_prefix_tokens}")

    def __str__(self) -> str:
        if self.kind != "tokens":
            return self.kind
        grid = "" if self.grid is None else f", grid={self.grid[0]}x{self.grid[1]}"
        return f"tokens(prefix={self.num_prefix_tokens}{grid})"


def as_layout(spec: str | Layout) -> Layout:
    """A :class:`Layout` from a name (``"conv"``, ``"tokens"``, ``"channels_last"``,
    ``"vector"``; also ``"BCHW"``, ``"BNC"``, ``"BHWC"``, ``"BC"``) or a ``Layout``. A
    ``"tokens"`` name leaves the prefix count to the model (``num_prefix_tokens=None``);
    ``"tokens:2"`` states it."""
    if isinstance(spec, Layout):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a layout is a name or a Layout, got {type(spec).__name__}")
    name, _, prefix = spec.strip().partition(":")
    kind = _ALIASES.get(name.lower(), name.lower())
    if kind not in LAYOUTS:
        raise ValueError(f"unknown layout {spec!r}; valid: {list(LAYOUTS)} "
                         f"(or {sorted(_ALIASES)}), 'tokens:<num_prefix_tokens>'")
    if prefix:
        if kind != "tokens" or not prefix.isdigit():
            raise ValueError(f"bad layout {spec!r}; only 'tokens:<int>' takes a prefix count")
        return Layout(kind, int(prefix))
    return Layout(kind, None if kind == "tokens" else 0)


def as_layouts(layouts: Mapping[str, str | Layout] | None) -> dict[str, Layout]:
    """``{layer: Layout}`` from ``{layer: name or Layout}`` (``None``: empty)."""
    if layouts is None:
        return {}
    if not isinstance(layouts, Mapping):
        raise TypeError(f"layouts must map layer names to layouts, e.g. "
                        f"{{'blocks.5': 'tokens'}}; got {type(layouts).__name__}")
    return {str(k): as_layout(v) for k, v in layouts.items()}


# ----------------------------------------------------------------------- detection
_FIRST = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
          nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
          nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
          nn.modules.instancenorm._InstanceNorm)


def _leaf_rule(module: nn.Module | None) -> str | None:
    """``"first"``/``"last"``: where a leaf module type puts its channels; ``None`` when
    the module is a container or says nothing (activations, dropout, identity)."""
    if module is None or any(True for _ in module.children()):
        return None
    name = type(module).__name__
    if isinstance(module, _FIRST) or name.endswith(("2d", "1d", "3d")):
        return "first"  # includes timm's LayerNorm2d, which normalizes (B, C, H, W) maps
    if isinstance(module, (nn.Linear, nn.LayerNorm, nn.Embedding)):
        return "last"
    return None


def _shape_rule(shape: tuple[int, ...]) -> str | None:
    """For ``(B, d1, d2, d3)``: ``"first"`` when ``d2 == d3 != d1`` (square spatial size
    after the channels), ``"last"`` when ``d1 == d2 != d3``; ``None`` when ambiguous."""
    _, d1, d2, d3 = shape
    if d2 == d3 and d1 != d2:
        return "first"
    if d1 == d2 and d3 != d1:
        return "last"
    return None


def _model_tokens(model: nn.Module | None) -> tuple[int, tuple[int, int] | None, tuple[str, ...]]:
    """timm-style ``(num_prefix_tokens, patch grid, prefix names)`` of a model (0, None, ()
    when it has none)."""
    if model is None:
        return 0, None, ()
    p = getattr(model, "num_prefix_tokens", 0)
    p = int(p) if isinstance(p, int) else 0
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    grid = (int(grid[0]), int(grid[1])) if isinstance(grid, (tuple, list)) and len(grid) == 2 \
        else None
    names: list[str] = []
    if getattr(model, "cls_token", None) is not None:
        names.append("cls")
    regs = getattr(model, "reg_token", None)
    names += [f"reg{k}" for k in range(regs.shape[1] if isinstance(regs, Tensor) else 0)]
    if getattr(model, "dist_token", None) is not None:
        names.append("dist")
    if len(names) != p:
        names = ["cls"] if p == 1 else []
    return p, grid, tuple(names)


def _token_layout(n: int, model: nn.Module | None, stated: Layout | None) -> Layout:
    """Prefix count and grid for ``N = n`` tokens: the stated count, else the model's
    ``num_prefix_tokens`` when the rest fills the patch grid, else none."""
    p_model, grid, names = _model_tokens(model)
    if stated is not None and stated.num_prefix_tokens is not None:
        p = stated.num_prefix_tokens
        names = stated.prefix_names or (names if p == p_model else ("cls",) if p == 1 else ())
    elif grid is not None and n - p_model == grid[0] * grid[1]:
        p = p_model
    elif grid is not None and n == grid[0] * grid[1]:
        p, names = 0, ()
    else:
        side = math.isqrt(max(n - p_model, 0))
        p = p_model if side * side == n - p_model else 0
        names = names if p == p_model else ()
    if p > n:
        raise ValueError(f"layout states {p} prefix tokens but the layer has {n} tokens")
    rest = n - p
    if stated is not None and stated.grid is not None:
        g = stated.grid
    elif grid is not None and grid[0] * grid[1] == rest:
        g = grid
    else:
        side = math.isqrt(rest)
        g = (side, side) if side * side == rest else (1, rest)
    if g[0] * g[1] != rest:
        raise ValueError(f"patch grid {g} does not hold the {rest} patch tokens of a layer "
                         f"with {n} tokens and {p} prefix tokens")
    return Layout("tokens", p, g, tuple(names))


def detect_layout(activation: Tensor, module: nn.Module | None = None,
                  model: nn.Module | None = None, stated: str | Layout | None = None
                  ) -> Layout:
    """The :class:`Layout` of ``activation``, the output (or input) of ``module`` in
    ``model``; ``stated`` (a user's layout for this layer) wins where it is given.

    Rules, in order: the stated layout; rank 2 → vector; rank 3 → tokens unless the leaf
    module is channels-first (``Conv1d``, ``BatchNorm1d``…); rank 4 → the leaf module type
    (``Conv2d``/``BatchNorm2d``/``LayerNorm2d`` → conv, ``Linear``/``LayerNorm`` →
    channels-last), else the shape (``(B, C, S, S)`` → conv, ``(B, S, S, C)`` →
    channels-last), else timm's ``model.output_fmt == "NHWC"`` → channels-last, else conv.
    Token layouts read the prefix count and patch grid from the model
    (``num_prefix_tokens``, ``patch_embed.grid_size``; see :func:`_token_layout`).

    Raises:
        ValueError: a stated layout that does not fit the tensor's rank.
    """
    st = as_layout(stated) if stated is not None else None
    d = activation.dim()
    if st is not None:
        want = {"conv": (3, 4), "tokens": (3,), "channels_last": (4,), "vector": (2,)}[st.kind]
        if d not in want:
            raise ValueError(f"layout {st.kind!r} reads {LAYOUTS[st.kind]} tensors but the "
                             f"layer's output has shape {tuple(activation.shape)}")
        return _token_layout(activation.shape[1], model, st) if st.kind == "tokens" else st
    if d == 2:
        return Layout("vector")
    rule = _leaf_rule(module)
    if d == 3:
        return Layout("conv") if rule == "first" else _token_layout(activation.shape[1],
                                                                      model, None)
    if d == 4:
        rule = rule or _shape_rule(tuple(activation.shape))
        if rule is None and str(getattr(model, "output_fmt", "")).upper() == "NHWC":
            rule = "last"
        return Layout("channels_last" if rule == "last" else "conv")
    return Layout("conv")


def layout_of(acts: Mapping[str, Tensor], layer: str) -> Layout:
    """The layout recorded with ``acts`` for ``layer`` (``acts.layouts``, filled by
    :func:`lightning_fv.optvis.hooks.capture`), else :func:`detect_layout` from the rank
    alone (a plain dict)."""
    known = getattr(acts, "layouts", None)
    if known and layer in known:
        return known[layer]
    return detect_layout(acts[layer])


# ------------------------------------------------------------------------ reading
def channels_first(activation: Tensor, layout: Layout) -> Tensor:
    """``(B, C, H, W)`` feature maps (``(B, C)`` for vectors) from ``activation`` in
    ``layout``: token sequences lose their prefix tokens and are laid on the patch grid
    (row-major), channels-last maps are permuted, 1-D maps get ``H = 1``. A view where
    possible; differentiable."""
    kind = layout.kind
    if kind == "vector":
        return activation
    if kind == "conv":
        return activation.unsqueeze(2) if activation.dim() == 3 else activation
    if kind == "channels_last":
        return activation.permute(0, 3, 1, 2)
    p = layout.num_prefix_tokens or 0
    b, n, c = activation.shape
    rows, cols = layout.grid if layout.grid is not None else _token_layout(
        n, None, Layout("tokens", p)).grid  # type: ignore[misc]
    if rows * cols != n - p:
        raise ValueError(f"{n - p} patch tokens do not fill the {rows}x{cols} patch grid of "
                         f"layout {layout}")
    return activation[:, p:, :].transpose(1, 2).reshape(b, c, rows, cols)


def prefix_tokens(activation: Tensor, layout: Layout) -> Tensor:
    """The prefix tokens ``(B, P, C)`` of a token layout (CLS first in timm)."""
    if layout.kind != "tokens":
        raise ValueError(f"layout {layout} has no prefix tokens (only token layouts do)")
    return activation[:, :layout.num_prefix_tokens or 0, :]


def prefix_index(layout: Layout, name: str, layer: str = "") -> int:
    """Index among the prefix tokens of ``@name`` (``"cls"``, ``"reg0"``, ``"prefix1"``)."""
    p = layout.num_prefix_tokens or 0
    valid = [*layout.prefix_names, *(f"prefix{k}" for k in range(p))]
    where = f"layer {layer!r} " if layer else ""
    if layout.kind != "tokens" or p == 0:
        raise ValueError(f"position @{name}: {where}has no prefix tokens (layout {layout}); "
                         "use @row,col or no position")
    if name in layout.prefix_names:
        return layout.prefix_names.index(name)
    m = re.fullmatch(r"prefix(\d+)", name)
    if m and int(m.group(1)) < p:
        return int(m.group(1))
    raise ValueError(f"unknown prefix token @{name} for {where}with layout {layout}; "
                     f"valid: {['@' + v for v in valid]}")


def num_channels(activation: Tensor, layout: Layout) -> int:
    """Feature channels ``C`` of ``activation`` in ``layout``."""
    if layout.kind in ("tokens", "channels_last"):
        return int(activation.shape[-1])
    return int(activation.shape[1])


def spatial_size(activation: Tensor, layout: Layout) -> tuple[int, int] | None:
    """``(H, W)`` of the channel maps (the patch grid for tokens); ``None`` for vectors."""
    if layout.kind == "vector":
        return None
    return tuple(channels_first(activation[:1], layout).shape[-2:])  # type: ignore[return-value]


def features(acts: Mapping[str, Tensor], layer: str) -> Tensor:
    """``channels_first(acts[layer], layout_of(acts, layer))``: the layer's ``(B, C, H, W)``
    maps (``(B, C)`` vectors) whatever its layout."""
    return channels_first(acts[layer], layout_of(acts, layer))


def channel_mean(activation: Tensor, layout: Layout) -> Tensor:
    """``(B, C)``: every channel averaged over positions / patch tokens (prefix excluded)."""
    x = channels_first(activation, layout)
    return x if x.dim() == 2 else x.flatten(2).mean(2)


def positions(activation: Tensor, layout: Layout) -> Tensor:
    """``(B·H·W, C)``: every spatial position (patch token) a row."""
    x = channels_first(activation, layout)
    return x if x.dim() == 2 else x.flatten(2).transpose(1, 2).reshape(-1, x.shape[1])
