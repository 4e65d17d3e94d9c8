"""Layer access: unit names, layer listing and hooks that never outlive their context.

Units are addressed Lucent-style as ``"layer:index"`` (``"layer4.1.conv2:37"``,
``"fc:281"``) or as a :class:`Unit` (module name + channel index, optional spatial
position or prefix token). The index is a feature channel in every activation layout
(conv maps, tokens, channels-last maps, vectors; see :mod:`lightning_fv.optvis.layout`),
and :func:`capture` records each layer's layout with its activation. Hooks are
registered only inside :func:`capture` and removed on exit, on exceptions too;
:func:`preserved_state` restores training mode, ``requires_grad`` flags and parameter
gradients exactly.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_fv.optvis.layout import (
    MODEL_ATTRIBUTE,
    Layout,
    as_layouts,
    channel_mean,
    detect_layout,
    num_channels,
    positions,
    prefix_index,
    spatial_size,
)
from lightning_fv.optvis.transform import model_input_size
from lightning_fv.utils.device import model_device, model_dtype

#: Keys under which the model output / input are kept next to layer activations.
OUTPUT_KEY = "__output__"
INPUT_KEY = "__input__"


@dataclass(frozen=True)
class Unit:
    """One unit: feature channel ``index`` of the module named ``layer``, in every layout.

    ``position`` optionally fixes a spatial location ``(row, col)`` of the channel map (a
    patch-grid cell for tokens; a "neuron" in Lucent's words) or names a prefix token of a
    token layout (``"cls"``, ``"reg0"``, ``"dist"``, ``"prefix<k>"``); ``None`` means the
    whole channel, averaged over positions / patch tokens (prefix tokens excluded).
    """

    layer: str
    index: int
    position: tuple[int, int] | str | None = None

    def __str__(self) -> str:
        if self.position is None:
            pos = ""
        elif isinstance(self.position, str):
            pos = f"@{self.position}"
        else:
            pos = f"@{self.position[0]},{self.position[1]}"
        return f"{self.layer}:{self.index}{pos}"


_TOKEN_NAME = re.compile(r"[A-Za-z_]+\d*")


def parse_unit(unit: str | Unit | tuple[str, int]) -> Unit:
    """Parse ``"layer:index"``, ``"layer:index@row,col"`` (one position / patch-grid cell),
    ``"layer:index@cls"`` (a prefix token: ``cls``, ``reg<k>``, ``dist``, ``prefix<k>``)
    or ``(layer, index)``."""
    if isinstance(unit, Unit):
        return unit
    if isinstance(unit, tuple):
        layer, index = unit
        return Unit(str(layer), int(index))
    if not isinstance(unit, str) or ":" not in unit:
        raise ValueError(
            f"cannot parse unit {unit!r}; expected 'layer:index' such as 'fc:3' or "
            "'layer4.1.conv2:37@3,3' or 'blocks.5:3@cls'"
        )
    layer, _, rest = unit.rpartition(":")
    position: tuple[int, int] | str | None = None
    if "@" in rest:
        rest, _, pos = rest.partition("@")
        pos = pos.strip()
        if _TOKEN_NAME.fullmatch(pos):
            position = pos.lower()
        else:
            try:
                r, c = (int(v) for v in pos.split(","))
            except ValueError as err:
                raise ValueError(f"bad position in unit {unit!r}; expected '@row,col' or a "
                                 "prefix token such as '@cls', '@reg0'") from err
            position = (r, c)
    try:
        index = int(rest)
    except ValueError as err:
        raise ValueError(f"bad channel index in unit {unit!r}; expected an integer") from err
    return Unit(layer, index, position)


def layer_names(model: nn.Module) -> list[str]:
    """Names of all sub-modules of ``model`` (``""`` excluded), in registration order."""
    return [name for name, _ in model.named_modules() if name]


def get_layer(model: nn.Module, name: str) -> nn.Module:
    """The sub-module called ``name``; an unknown name lists the closest valid names."""
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.3)
    hint = f"closest layer names: {close}" if close else f"some valid names: {names[:8]}"
    raise KeyError(f"unknown layer {name!r} in {type(model).__name__}; {hint}")


def _first_tensor(output: object) -> Tensor:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    raise TypeError(f"layer output of type {type(output).__name__} is not a tensor")


class Activations(dict):
    """Mapping ``layer name → activation tensor`` filled by :func:`capture`; ``layouts``
    maps each recorded layer to its :class:`~lightning_fv.optvis.layout.Layout`."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.layouts: dict[str, Layout] = {}

    def __getitem__(self, name: str) -> Tensor:
        if name not in self:
            raise KeyError(
                f"no activation recorded for layer {name!r}; recorded: {sorted(self.keys())}"
            )
        return super().__getitem__(name)


AT = ("output", "input")


LayoutsLike = Mapping[str, "str | Layout"] | None


def stated_layouts(model: nn.Module, layouts: LayoutsLike = None) -> dict[str, Layout]:
    """The layouts a user states: the model attribute ``fv_layouts`` (``{layer: layout}``)
    updated by ``layouts``; each layer must exist (an unknown one lists the closest)."""
    out = as_layouts(getattr(model, MODEL_ATTRIBUTE, None))
    out.update(as_layouts(layouts))
    for name in out:
        get_layer(model, name)
    return out


@contextmanager
def capture(model: nn.Module, layers: Sequence[str], detach: bool = False,
            at: str = "output", layouts: LayoutsLike = None) -> Iterator[Activations]:
    """Record the outputs (``at="output"``) or the first positional inputs
    (``at="input"``) of ``layers`` during forward passes inside the ``with`` block.

    Hooks are removed on exit, including when the body raises. Each forward overwrites
    the previous activation of a layer. ``acts.layouts[layer]`` is the layer's
    :class:`~lightning_fv.optvis.layout.Layout`, detected by
    :func:`~lightning_fv.optvis.layout.detect_layout` unless stated in ``layouts``
    (``{"blocks.5": "tokens"}``) or the model's ``fv_layouts`` attribute.

    Example::

        with capture(model, ["layer3", "fc"]) as acts:
            model(x)
        acts["layer3"].shape  # (B, C, H, W)
    """
    if at not in AT:
        raise ValueError(f"at must be one of {AT}, got {at!r}")
    acts = Activations()
    handles = []
    stated = stated_layouts(model, layouts)
    seen: dict[tuple[str, tuple[int, ...]], Layout] = {}

    def keep(name: str, module: nn.Module, t: Tensor) -> None:
        acts[name] = t.detach() if detach else t
        key = (name, tuple(t.shape[1:]))
        if key not in seen:
            seen[key] = detect_layout(t, module, model, stated.get(name))
        acts.layouts[name] = seen[key]

    try:
        for name in dict.fromkeys(layers):
            module = get_layer(model, name)
            if at == "output":
                def hook(m: nn.Module, _i: object, out: object, _name: str = name) -> None:
                    keep(_name, m, _first_tensor(out))

                handles.append(module.register_forward_hook(hook))
            else:
                def pre_hook(m: nn.Module, args: tuple, _name: str = name) -> None:
                    keep(_name, m, _first_tensor(args))

                handles.append(module.register_forward_pre_hook(pre_hook))
        yield acts
    finally:
        for h in handles:
            h.remove()


Reduction = Callable[[Tensor], Tensor]


def _reduction(reduce: str | Reduction | None) -> Callable[[Tensor, Layout], Tensor]:
    """The per-batch reduction ``(activation, layout) → tensor`` of :func:`record` (see
    there for the names)."""
    if reduce is None:
        return lambda a, _lay: a
    if callable(reduce):
        try:
            params = inspect.signature(reduce).parameters.values()
        except (TypeError, ValueError):  # builtins without a signature
            params = []
        two = sum(1 for p in params if p.default is p.empty and p.kind in (
            p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)) >= 2
        return reduce if two else (lambda a, _lay: reduce(a))
    if reduce == "flatten":
        return lambda a, _lay: a.flatten(1)
    if reduce == "channel_mean":
        return channel_mean
    if reduce == "positions":
        return positions
    raise ValueError(
        f"unknown reduce {reduce!r}; valid: None, 'flatten', 'channel_mean', 'positions' "
        "or a callable"
    )


def _batches(inputs: Tensor | Iterable, batch_size: int) -> Iterator[Tensor]:
    if isinstance(inputs, Tensor):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for s in range(0, inputs.shape[0], batch_size):
            yield inputs[s:s + batch_size]
        return
    for b in inputs:
        yield b[0] if isinstance(b, (tuple, list)) else b


def record(
    model: nn.Module,
    layers: Sequence[str],
    inputs: Tensor | Iterable,
    *,
    at: str = "output",
    batch_size: int = 64,
    reduce: str | Reduction | None = None,
    detach: bool = True,
    device: torch.device | str | None = None,
    to_cpu: bool = False,
    keep_output: bool = False,
    keep_inputs: bool = False,
    preprocess: Callable[[Tensor], Tensor] | None = None,
    layouts: LayoutsLike = None,
) -> Activations:
    """Run ``model`` over ``inputs`` and return the activations of ``layers``: the one
    entry point for recording (in the spirit of TransformerLens' ``run_with_cache``).

    The model runs in eval mode with frozen parameters; its modes, ``requires_grad`` flags
    and gradients are restored and the hooks removed on exit (also on error).

    Args:
        model: any ``nn.Module``.
        layers: module names (as :func:`layer_names` lists them).
        inputs: a tensor ``(N, …)`` split into ``batch_size`` batches, or an iterable of
            batches (a DataLoader yielding ``x`` or ``(x, y, …)``).
        at: ``"output"`` (the module's output) or ``"input"`` (its first input).
        reduce: per batch, before concatenation: ``None`` (as recorded), ``"flatten"``
            (``(N, D)``: every entry in the recorded order, prefix tokens included),
            ``"channel_mean"`` (``(N, C)``: each feature channel averaged over the spatial
            positions or patch tokens, prefix tokens excluded, in every layout),
            ``"positions"`` (``(N·h·w, C)``: every spatial position / patch token a row),
            or a callable ``Tensor → Tensor`` of the recorded tensor (one with two
            required parameters gets ``(tensor, layout)``, the layer's
            :class:`~lightning_fv.optvis.layout.Layout`).
        detach: record without autograd (``torch.no_grad``); ``False`` keeps the graph.
        device: where inputs go; default the model's device.
        to_cpu: move each reduced batch to the CPU (for large data sets).
        keep_output: also keep the model output under ``OUTPUT_KEY``.
        keep_inputs: also keep the (CPU) input batches under ``INPUT_KEY``.
        preprocess: applied to each batch on the device before the model.
        layouts: layouts stated for layers (see :func:`capture`).

    Returns:
        :class:`Activations` ``{layer: tensor}`` concatenated over batches along dim 0,
        with ``layouts`` (those of the recorded, unreduced activations).
    """
    reducer = _reduction(reduce)
    dev = torch.device(device) if device is not None else model_device(model)
    names = list(dict.fromkeys(layers))
    parts: dict[str, list[Tensor]] = {n: [] for n in names}
    if keep_output:
        parts[OUTPUT_KEY] = []
    if keep_inputs:
        parts[INPUT_KEY] = []
    grad_mode = torch.no_grad() if detach else torch.enable_grad()
    with grad_mode, preserved_state(model), capture(model, names, detach=detach,
                                                    at=at, layouts=layouts) as acts:
        for x in _batches(inputs, batch_size):
            xd = x.to(dev)
            y = model(preprocess(xd) if preprocess is not None else xd)
            batch = {n: acts[n] for n in names}
            if keep_output:
                batch[OUTPUT_KEY] = _first_tensor(y)
            for n, a in batch.items():
                r = reducer(a, acts.layouts[n]) if n != OUTPUT_KEY else a
                parts[n].append(r.cpu() if to_cpu else r)
            if keep_inputs:
                parts[INPUT_KEY].append(x.detach().cpu())
    out = Activations()
    for n, v in parts.items():
        if not v:
            raise ValueError("record got no input batches")
        out[n] = torch.cat(v)
    out.layouts.update({n: acts.layouts[n] for n in names if n in acts.layouts})
    return out


@contextmanager
def preserved_state(model: nn.Module, frozen: bool = True,
                    eval_mode: bool = True) -> Iterator[nn.Module]:
    """Temporarily put ``model`` in eval mode with frozen parameters; restore it exactly.

    On exit (also on exceptions) the ``training`` flag of every sub-module, every
    parameter's ``requires_grad`` and every parameter's ``.grad`` (tensor identity and
    values) are what they were on entry.
    """
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    grad_refs = [p.grad for p in params]
    try:
        if eval_mode:
            model.eval()
        if frozen:
            for p in params:
                p.requires_grad_(False)
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag, g_ref, g in zip(params, flags, grad_refs, grads):
            p.requires_grad_(flag)
            if g_ref is None:
                p.grad = None
            else:
                g_ref.copy_(g)
                p.grad = g_ref


@torch.no_grad()
def list_layers(
    model: nn.Module,
    input_size: tuple[int, ...] = (3, 224, 224),
    leaf_only: bool = False,
    *,
    layouts: LayoutsLike = None,
    with_layout: bool = False,
) -> list[tuple]:
    """``(name, module type, output shape without batch)`` for every layer, from one forward;
    with ``with_layout=True`` ``(name, module type, shape, layout)``, the
    :class:`~lightning_fv.optvis.layout.Layout` that units of the layer are read in
    (detected, or stated in ``layouts`` / the model's ``fv_layouts``).

    ``input_size`` is ``(C, H, W)``; the dummy input follows the model's device and dtype.
    Layers whose output is not a tensor are skipped.
    """
    device, dtype = model_device(model), model_dtype(model)
    mods = dict(model.named_modules())
    names = [
        n for n, m in mods.items()
        if n and (not leaf_only or not any(True for _ in m.children()))
    ]
    stated = stated_layouts(model, layouts)
    shapes: dict[str, tuple[int, ...]] = {}
    found: dict[str, Layout] = {}
    handles = []
    try:
        for n in names:
            def hook(m: nn.Module, _i: object, out: object, _n: str = n) -> None:
                if isinstance(out, Tensor) and _n not in shapes:
                    shapes[_n] = tuple(out.shape[1:])
                    try:
                        found[_n] = detect_layout(out, m, model, stated.get(_n))
                    except ValueError:  # a stated layout that does not fit: report later
                        found[_n] = Layout("conv")
            handles.append(mods[n].register_forward_hook(hook))
        with preserved_state(model):
            model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    if with_layout:
        return [(n, type(mods[n]).__name__, shapes[n], found[n]) for n in names if n in shapes]
    return [(n, type(mods[n]).__name__, shapes[n]) for n in names if n in shapes]


def layer_channels(shape: tuple[int, ...], layout: Layout) -> int:
    """Feature channels of a layer from its output ``shape`` (batch excluded) and layout."""
    return int(shape[-1] if layout.kind in ("tokens", "channels_last") else shape[0])


def check_unit_index(unit: Unit, activation: Tensor, layout: Layout | None = None) -> None:
    """Raise ``IndexError`` naming the layer's channel count (or spatial size, or valid
    prefix tokens) if ``unit`` is out of range of ``activation`` read in ``layout``
    (default: detected from the rank, see :func:`~lightning_fv.optvis.layout.detect_layout`)."""
    lay = layout if layout is not None else detect_layout(activation)
    n = num_channels(activation, lay)
    if not 0 <= unit.index < n:
        raise IndexError(
            f"unit index {unit.index} out of range for layer {unit.layer!r} with {n} "
            f"channels (valid: 0..{n - 1}) in layout {lay}"
        )
    if unit.position is None:
        return
    if isinstance(unit.position, str):
        prefix_index(lay, unit.position, unit.layer)
        return
    size = spatial_size(activation, lay)
    if size is None:
        raise ValueError(f"unit {unit} has a position but layer {unit.layer!r} gives "
                         f"vectors {tuple(activation.shape)}")
    h, w = size
    r, c = unit.position
    if not (0 <= r < h and 0 <= c < w):
        what = "patch grid" if lay.kind == "tokens" else "spatial size"
        raise IndexError(
            f"position {unit.position} out of range for layer {unit.layer!r} with "
            f"{what} {(h, w)}"
        )


def parse_units(
    units: str | Unit | Sequence[str | Unit | tuple[str, int]],
    model: nn.Module | None = None,
    image_size: int | tuple[int, int] | None = None,
    layouts: LayoutsLike = None,
) -> list[Unit]:
    """The one unit grammar: parse (and expand) a unit list into :class:`Unit` s, once.

    Accepted forms, alone or in a list (a string may hold a list: ``"[fc:*, block3:0-15]"``
    or ``"fc:1, fc:2"``):

    - ``"layer:idx"`` a feature channel (in every layout, see
      :mod:`~lightning_fv.optvis.layout`), ``"layer:idx@r,c"`` one position (patch-grid
      cell) of it, ``"layer:idx@cls"`` its value on a prefix token;
    - ``"layer:lo-hi"`` the channels ``lo…hi`` (inclusive);
    - ``"layer:*"`` every channel of the layer (needs ``model`` and ``image_size`` for
      one dummy forward that reads the layer's size and layout, at the model's required
      input size when it states one; ``layouts`` as in :func:`capture`);
    - a :class:`Unit` or a ``(layer, idx)`` pair.

    With ``model`` given, every layer is checked to exist (an unknown one lists the closest
    names). An empty list raises: there is nothing to render.
    """
    if isinstance(units, str):
        body = units.strip()
        if body.startswith("[") and body.endswith("]"):
            body = body[1:-1]
        items: list = [p.strip().strip("'\"") for p in _split_top(body) if p.strip()]
    elif isinstance(units, (Unit, tuple)):
        items = [units]
    else:
        items = list(units)
    if not items:
        raise ValueError("no units given; expected e.g. ['fc:3'], ['block3:0-15'] or ['fc:*']")
    out: list[Unit] = []
    shapes: dict[str, tuple[int, ...]] | None = None
    for item in items:
        if isinstance(item, str) and ":" in item:
            layer, _, rest = item.rpartition(":")
            if rest == "*":
                if model is None:
                    raise ValueError(f"unit {item!r}: a wildcard needs the model to count "
                                     "the layer's channels")
                if shapes is None:
                    hw = model_input_size(model) or ((224, 224) if image_size is None else (
                        (image_size, image_size) if isinstance(image_size, int)
                        else tuple(image_size)))
                    shapes = {n: layer_channels(sh, lay) for n, _, sh, lay in list_layers(
                        model, (3, *hw), layouts=layouts, with_layout=True)}
                if layer not in shapes:
                    get_layer(model, layer)  # raises with the closest names
                    raise ValueError(f"layer {layer!r} gives no tensor output")
                out += [Unit(layer, i) for i in range(shapes[layer])]
                continue
            if "-" in rest and "@" not in rest:
                try:
                    lo, hi = (int(v) for v in rest.split("-"))
                except ValueError as err:
                    raise ValueError(f"bad range in unit {item!r}; expected 'layer:lo-hi'"
                                     ) from err
                if hi < lo:
                    raise ValueError(f"empty range in unit {item!r}: {hi} < {lo}")
                out += [Unit(layer, i) for i in range(lo, hi + 1)]
                continue
        out.append(parse_unit(item))
    if model is not None:
        for layer in dict.fromkeys(u.layer for u in out):
            get_layer(model, layer)
    return out


def _split_top(text: str) -> list[str]:
    """Split on commas that are not inside a position ``@r,c``."""
    parts, cur = [], ""
    for piece in text.split(","):
        if cur and "@" in cur and cur.count(",") == 0 and piece.strip().isdigit():
            cur += "," + piece
            continue
        if cur:
            parts.append(cur)
        cur = piece
    if cur:
        parts.append(cur)
    return parts


@contextmanager
def patched_forwards(
    mods: Sequence[nn.Module],
    make: Callable[[nn.Module], Callable[..., Tensor]],
) -> Iterator[None]:
    """Give each module of ``mods`` the forward ``make(module)`` inside the block (an
    instance attribute, so the module's hooks still run); the previous forwards are
    restored on exit, also on error."""
    saved = [m.__dict__.get("forward") for m in mods]
    for m in mods:
        m.forward = make(m)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for m, old in zip(mods, saved):
            if old is None:
                del m.forward
            else:
                m.forward = old  # type: ignore[method-assign]
