"""Layer access: unit names, layer listing and hooks that never outlive their context.

Units are addressed Lucent-style as ``"layer:index"`` (``"layer4.1.conv2:37"``,
``"fc:281"``) or as a :class:`Unit` (module name + channel index, optional spatial
position). Hooks are registered only inside :func:`capture` and removed on exit, on
exceptions too; :func:`preserved_state` restores training mode, ``requires_grad`` flags
and parameter gradients exactly.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn


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


@contextmanager
def capture(model: nn.Module, layers: Sequence[str], detach: bool = False) -> Iterator[Activations]:
    """Record the outputs of ``layers`` during forward passes inside the ``with`` block.

    Hooks are removed on exit, including when the body raises. Each forward overwrites
    the previous activation of a layer.

    Example::

        with capture(model, ["layer3", "fc"]) as acts:
            model(x)
        acts["layer3"].shape  # (B, C, H, W)
    """
    acts = Activations()
    handles = []
    try:
        for name in dict.fromkeys(layers):
            module = get_layer(model, name)

            def hook(_m: nn.Module, _i: object, out: object, _name: str = name) -> None:
                t = _first_tensor(out)
                acts[_name] = t.detach() if detach else t

            handles.append(module.register_forward_hook(hook))
        yield acts
    finally:
        for h in handles:
            h.remove()


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
    p = next(iter(model.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
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


def expand_units(units: list[str], model: nn.Module, image_size: int) -> list[str]:
    """Expand ``"layer:*"`` into every channel of ``layer`` (``"layer:0-9"`` a range)."""
    out: list[str] = []
    shapes = None
    for u in units:
        layer, _, rest = u.rpartition(":")
        if rest == "*":
            if shapes is None:
                shapes = {n: s for n, _, s in list_layers(model, (3, image_size, image_size))}
            if layer not in shapes:
                get_layer(model, layer)  # raises with the closest names
            out += [f"{layer}:{i}" for i in range(shapes[layer][0])]
        elif "-" in rest and "@" not in rest:
            lo, hi = (int(v) for v in rest.split("-"))
            out += [f"{layer}:{i}" for i in range(lo, hi + 1)]
        else:
            parse_unit(u)
            out.append(u)
    return out


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
