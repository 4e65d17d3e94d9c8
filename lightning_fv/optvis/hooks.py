"""Layer access: unit names, layer listing and hooks that never outlive their context.

Units are addressed Lucent-style as ``"layer:index"`` (``"layer4.1.conv2:37"``,
``"fc:281"``) or as a :class:`Unit` (module name + channel index, optional spatial
position). Hooks are registered only inside :func:`capture` and removed on exit, on
exceptions too; :func:`preserved_state` restores training mode, ``requires_grad`` flags
and parameter gradients exactly.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_fv.utils.device import model_device, model_dtype

#: Keys under which the model output / input are kept next to layer activations.
OUTPUT_KEY = "__output__"
INPUT_KEY = "__input__"


@dataclass(frozen=True)
class Unit:
    """One unit: a channel (or neuron) ``index`` of the module named ``layer``.

    ``position`` optionally fixes a spatial location ``(row, col)`` of a conv feature map
    (a "neuron" in Lucent's words); ``None`` means the whole channel.
    """

    layer: str
    index: int
    position: tuple[int, int] | None = None

    def __str__(self) -> str:
        pos = "" if self.position is None else f"@{self.position[0]},{self.position[1]}"
        return f"{self.layer}:{self.index}{pos}"


def parse_unit(unit: str | Unit | tuple[str, int]) -> Unit:
    """Parse ``"layer:index"`` (optionally ``"layer:index@row,col"``) or ``(layer, index)``."""
    if isinstance(unit, Unit):
        return unit
    if isinstance(unit, tuple):
        layer, index = unit
        return Unit(str(layer), int(index))
    if not isinstance(unit, str) or ":" not in unit:
        raise ValueError(
            f"cannot parse unit {unit!r}; expected 'layer:index' such as 'fc:3' or "
            "'layer4.1.conv2:37@3,3'"
        )
    layer, _, rest = unit.rpartition(":")
    position = None
    if "@" in rest:
        rest, _, pos = rest.partition("@")
        try:
            r, c = (int(v) for v in pos.split(","))
        except ValueError as err:
            raise ValueError(f"bad position in unit {unit!r}; expected '@row,col'") from err
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
    """Mapping ``layer name → activation tensor`` filled by :func:`capture`."""

    def __getitem__(self, name: str) -> Tensor:
        if name not in self:
            raise KeyError(
                f"no activation recorded for layer {name!r}; recorded: {sorted(self.keys())}"
            )
        return super().__getitem__(name)


AT = ("output", "input")


@contextmanager
def capture(model: nn.Module, layers: Sequence[str], detach: bool = False,
            at: str = "output") -> Iterator[Activations]:
    """Record the outputs (``at="output"``) or the first positional inputs
    (``at="input"``) of ``layers`` during forward passes inside the ``with`` block.

    Hooks are removed on exit, including when the body raises. Each forward overwrites
    the previous activation of a layer.

    Example::

        with capture(model, ["layer3", "fc"]) as acts:
            model(x)
        acts["layer3"].shape  # (B, C, H, W)
    """
    if at not in AT:
        raise ValueError(f"at must be one of {AT}, got {at!r}")
    acts = Activations()
    handles = []
    try:
        for name in dict.fromkeys(layers):
            module = get_layer(model, name)
            if at == "output":
                def hook(_m: nn.Module, _i: object, out: object, _name: str = name) -> None:
                    t = _first_tensor(out)
                    acts[_name] = t.detach() if detach else t

                handles.append(module.register_forward_hook(hook))
            else:
                def pre_hook(_m: nn.Module, args: tuple, _name: str = name) -> None:
                    t = _first_tensor(args)
                    acts[_name] = t.detach() if detach else t

                handles.append(module.register_forward_pre_hook(pre_hook))
        yield acts
    finally:
        for h in handles:
            h.remove()


Reduction = Callable[[Tensor], Tensor]


def _reduction(reduce: str | Reduction | None) -> Reduction:
    """The per-batch reduction of :func:`record` (see there for the names)."""
    if reduce is None:
        return lambda a: a
    if callable(reduce):
        return reduce
    if reduce == "flatten":
        return lambda a: a.flatten(1)
    if reduce == "channel_mean":
        return lambda a: a.flatten(2).mean(2) if a.dim() > 2 else a
    if reduce == "positions":
        return lambda a: a.movedim(1, -1).reshape(-1, a.shape[1]) if a.dim() > 2 else a
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
            (``(N, D)``), ``"channel_mean"`` (``(N, C)``: the mean over every dimension
            after the channel one), ``"positions"`` (``(N·h·w, C)``: every spatial
            position a row), or a callable ``Tensor → Tensor``.
        detach: record without autograd (``torch.no_grad``); ``False`` keeps the graph.
        device: where inputs go; default the model's device.
        to_cpu: move each reduced batch to the CPU (for large data sets).
        keep_output: also keep the model output under ``OUTPUT_KEY``.
        keep_inputs: also keep the (CPU) input batches under ``INPUT_KEY``.
        preprocess: applied to each batch on the device before the model.

    Returns:
        :class:`Activations` ``{layer: tensor}`` concatenated over batches along dim 0.
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
                                                    at=at) as acts:
        for x in _batches(inputs, batch_size):
            xd = x.to(dev)
            y = model(preprocess(xd) if preprocess is not None else xd)
            batch = {n: acts[n] for n in names}
            if keep_output:
                batch[OUTPUT_KEY] = _first_tensor(y)
            for n, a in batch.items():
                r = reducer(a) if n != OUTPUT_KEY else a
                parts[n].append(r.cpu() if to_cpu else r)
            if keep_inputs:
                parts[INPUT_KEY].append(x.detach().cpu())
    out = Activations()
    for n, v in parts.items():
        if not v:
            raise ValueError("record got no input batches")
        out[n] = torch.cat(v)
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
) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(name, module type, output shape without batch)`` for every layer, from one forward.

    ``input_size`` is ``(C, H, W)``; the dummy input follows the model's device and dtype.
    Layers whose output is not a tensor are skipped.
    """
    device, dtype = model_device(model), model_dtype(model)
    names = [
        n for n, m in model.named_modules()
        if n and (not leaf_only or not any(True for _ in m.children()))
    ]
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    try:
        for n in names:
            def hook(_m: nn.Module, _i: object, out: object, _n: str = n) -> None:
                if isinstance(out, Tensor):
                    shapes.setdefault(_n, tuple(out.shape[1:]))
            handles.append(get_layer(model, n).register_forward_hook(hook))
        with preserved_state(model):
            model(torch.zeros(1, *input_size, device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
    mods = dict(model.named_modules())
    return [(n, type(mods[n]).__name__, shapes[n]) for n in names if n in shapes]


def check_unit_index(unit: Unit, activation: Tensor) -> None:
    """Raise ``IndexError`` naming the layer size if ``unit`` is out of range of ``activation``."""
    n = activation.shape[1]
    if not 0 <= unit.index < n:
        raise IndexError(
            f"unit index {unit.index} out of range for layer {unit.layer!r} with {n} "
            f"channels (valid: 0..{n - 1})"
        )
    if unit.position is not None:
        if activation.dim() != 4:
            raise ValueError(f"unit {unit} has a position but layer output is {activation.dim()}-D")
        h, w = activation.shape[-2:]
        r, c = unit.position
        if not (0 <= r < h and 0 <= c < w):
            raise IndexError(
                f"position {unit.position} out of range for layer {unit.layer!r} with "
                f"spatial size {(h, w)}"
            )


def parse_units(
    units: str | Unit | Sequence[str | Unit | tuple[str, int]],
    model: nn.Module | None = None,
    image_size: int | tuple[int, int] | None = None,
) -> list[Unit]:
    """The one unit grammar: parse (and expand) a unit list into :class:`Unit` s, once.

    Accepted forms, alone or in a list (a string may hold a list: ``"[fc:*, block3:0-15]"``
    or ``"fc:1, fc:2"``):

    - ``"layer:idx"`` a channel, ``"layer:idx@r,c"`` one position of it;
    - ``"layer:lo-hi"`` the channels ``lo…hi`` (inclusive);
    - ``"layer:*"`` every channel of the layer (needs ``model`` and ``image_size`` for
      one dummy forward that reads the layer's size);
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
                    hw = (224, 224) if image_size is None else (
                        (image_size, image_size) if isinstance(image_size, int)
                        else tuple(image_size))
                    shapes = {n: sh for n, _, sh in list_layers(model, (3, *hw))}
                if layer not in shapes:
                    get_layer(model, layer)  # raises with the closest names
                    raise ValueError(f"layer {layer!r} gives no tensor output")
                out += [Unit(layer, i) for i in range(shapes[layer][0])]
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


def expand_units(units: list[str], model: nn.Module, image_size: int) -> list[str]:
    """:func:`parse_units` as strings (``"layer:*"``, ``"layer:0-9"`` expanded)."""
    return [str(u) for u in parse_units(units, model, image_size)]


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
