"""Silent units, `dont-trust-your-eyes…` §2.2 (Eq. 1–2, Fig. 5) and App. D.

A conv block ``y = ReLU(BN(Conv(x, Θ)))`` (Eq. 1) is replaced by (Eq. 2)

    ȳ = y + Δy,   Δy = ReLU(Conv(x, Θ̄) + b),   Θ̄ = αΘ + βΔΘ⊥,

with ``ΔΘ⊥`` orthogonal to ``Θ`` (per output channel, flattened over ``(C_in, kh, kw)``) and
a bias ``b`` so negative that ``Δy`` stays silent on natural input. Θ and the BN parameters
are untouched. Feature visualizations reach activations far above natural ones; there
``Δy`` switches on and, with ``β`` large enough, steers every unit towards ``ΔΘ⊥``: built
from one shared target pattern it makes a whole layer's visualizations near-identical.

Bias (per output channel ``c``), from natural images ``X``:

- ``"max"`` (§2.2): ``b_c = −(m_c + margin·|m_c|)`` with ``m_c = max_{x∈X, positions}
  Conv(x, Θ̄_c)``. Then ``Conv(x, Θ̄) + b ≤ 0`` on every image of ``X``, so ``ȳ = y`` bit for bit
  on them. (The paper writes ``b = −(α/β)·ȳ_max,nat``; like the authors' released notebook we
  subtract the maximum of the constructed filter's own natural response, which is what makes
  the guarantee hold — the printed rule ties ``b`` to ``y``'s natural maximum, not to that of
  ``Conv(x, Θ̄)``, and opened ``Δy`` on every natural image when tried; ``margin`` absorbs
  the last-bit differences between batched convolutions.) The guarantee covers the images
  ``X`` only; held-out images can exceed the maximum (:func:`natural_change` measures it).
- ``"percentile"`` (App. D, robust models): ``b_c = −q``-th percentile (default 99) of the
  per-image maxima of ``Conv(x, Θ̄_c)``; some natural images then activate ``Δy`` and the
  change is measured by :func:`natural_change`.

Target pattern: a whole layer becomes near-identical when every unit shares one pattern. The
authors' code takes a feature visualization of one unit of the layer as the target image and
uses the filter that image activates most in the conv's input features
(:func:`pattern_from_image`, ``region="mean"``); :func:`pattern_from_unit` and
:func:`random_pattern` are alternatives. ``Δy`` can only switch on for a unit whose
visualization exceeds the natural maximum of ``Conv(x, Θ̄)`` somewhere; units whose
visualizations stay in the natural range keep their original visualization (App. D).

Supported blocks: the bundled :class:`~lightning_fv.models.ConvBlock` (``conv → bn → relu``)
and the non-final convolutions of torchvision/timm ResNet ``BasicBlock``/``Bottleneck``
(``conv1/bn1``, ``conv2/bn2`` of a Bottleneck) — any ``Conv2d → BatchNorm2d → ReLU`` chain whose
ReLU is applied right after the BN. The final conv of a residual block is refused: its ReLU
comes after the residual addition. The conv module is replaced by :class:`SilentUnits`
(which computes ``ȳ`` including the BN and ReLU) and the BN by ``nn.Identity``; the block's
own ReLU then acts on the non-negative ``ȳ`` and leaves it unchanged.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import Tensor, nn

from lightning_fv.optvis.hooks import get_layer, record


class SilentUnits(nn.Module):
    """``ȳ = ReLU(BN(Conv(x, Θ))) + ReLU(Conv(x, Θ̄) + b)`` (Eq. 2).

    Args:
        conv: the original ``Conv2d`` (``Θ``).
        bn: the original ``BatchNorm2d`` (``Ψ``).
        theta_bar: ``(C_out, C_in/groups, kh, kw)`` filter ``Θ̄``.
        bias: ``(C_out,)`` bias ``b``.
    """

    def __init__(self, conv: nn.Conv2d, bn: nn.Module, theta_bar: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.delta = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                               stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                               groups=conv.groups, bias=True, padding_mode=conv.padding_mode)
        self.delta.to(device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            self.delta.weight.copy_(theta_bar)
            self.delta.bias.copy_(bias)
        self.delta.requires_grad_(False)
        # A module, like the block's own ReLU, so that feature visualization treats ``y``
        # exactly as in the original model (e.g. redirected ReLU gradients). The ReLU of
        # ``Δy`` stays functional: no FV heuristic can open the silent branch artificially.
        self.relu = nn.ReLU()

    def original(self, x: Tensor) -> Tensor:
        """``y = ReLU(BN(Conv(x, Θ)))`` (Eq. 1)."""
        return self.relu(self.bn(self.conv(x)))

    def forward(self, x: Tensor) -> Tensor:
        """``ȳ`` ``(B, C_out, H', W')``."""
        return self.original(x) + torch.relu(self.delta(x))


def orthogonal_perturbation(theta: Tensor, pattern: Tensor, on_parallel: str = "raise",
                            eps: float = 1e-12) -> Tensor:
    """``ΔΘ⊥``: ``pattern`` made orthogonal to each output filter of ``theta``.

    Args:
        theta: ``(C_out, C_in, kh, kw)`` filters ``Θ``.
        pattern: ``(C_in, kh, kw)`` shared target pattern, or ``(C_out, C_in, kh, kw)`` one
            per unit.
        on_parallel: ``"raise"`` if the pattern is parallel to a unit's filter (no orthogonal
            part), or ``"zero"`` to give that unit ``ΔΘ⊥ = 0`` (e.g. the unit whose filter
            is the pattern, see :func:`pattern_from_unit`).

    Returns:
        ``(C_out, C_in, kh, kw)``; filter ``c`` is ``p_c − (⟨p_c, Θ_c⟩/‖Θ_c‖²) Θ_c`` rescaled
        to ``‖Θ_c‖`` (so ``β`` is a strength relative to ``Θ``). Computed in float64.
    """
    if pattern.dim() == 3:
        pattern = pattern.unsqueeze(0).expand_as(theta)
    if pattern.shape != theta.shape:
        raise ValueError(f"pattern of shape {tuple(pattern.shape)} does not match filters "
                         f"{tuple(theta.shape)} (expected (C_in, kh, kw) or the same shape)")
    t = theta.detach().double().flatten(1)
    p = pattern.detach().double().flatten(1)
    tn = (t * t).sum(1, keepdim=True)
    perp = p - (p * t).sum(1, keepdim=True) / tn.clamp_min(eps) * t
    norm = perp.norm(dim=1, keepdim=True)
    # parallel to the precision of the inputs: a float32 filter folded with its BN scale is
    # parallel to the unfolded one only up to float32 rounding (~1e-7 relative)
    tol = max(1e-9, 64 * torch.finfo(theta.dtype).eps) if theta.is_floating_point() else 1e-9
    bad = (norm.squeeze(1) <= tol * p.norm(dim=1).clamp_min(eps)).nonzero().flatten()
    if on_parallel not in ("raise", "zero"):
        raise ValueError(f"on_parallel must be 'raise' or 'zero', got {on_parallel!r}")
    if bad.numel() and on_parallel == "raise":
        raise ValueError(f"pattern is parallel to the filters of units {bad.tolist()[:10]}; "
                         "choose another pattern")
    perp = perp / norm.clamp_min(eps) * tn.sqrt()
    perp[bad] = 0
    return perp.view_as(theta).to(theta.dtype)


def pattern_from_unit(conv: nn.Conv2d, unit: int) -> Tensor:
    """A shared target pattern: the filter of one unit ``(C_in, kh, kw)``, so that every unit
    is steered towards what that unit detects."""
    if not 0 <= unit < conv.out_channels:
        raise IndexError(f"unit {unit} out of range (0..{conv.out_channels - 1})")
    return conv.weight[unit].detach().clone()


def random_pattern(conv: nn.Conv2d, seed: int = 0) -> Tensor:
    """A shared random Gaussian target pattern ``(C_in, kh, kw)``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(conv.weight.shape[1:], generator=g).to(conv.weight)


@torch.no_grad()
def conv_inputs(model: nn.Module, conv_name: str, images: Tensor,
                batch_size: int = 256) -> list[Tensor]:
    """The inputs ``x`` of layer ``conv_name`` for ``images`` ``(N, 3, H, W)``, in batches
    (recorded with :func:`~lightning_fv.optvis.hooks.record`, the model's state restored)."""
    x = record(model, [conv_name], images, at="input", batch_size=batch_size)[conv_name]
    return list(x.split(batch_size))


def pattern_from_image(model: nn.Module, conv_name: str, image: Tensor,
                       region: str = "mean") -> Tensor:
    """A shared target pattern ``(C_in, kh, kw)`` from an image ``(3, H, W)``, in the feature
    space of the input of ``conv_name``.

    Args:
        region: ``"mean"`` (default): the mean ``kh × kw`` patch over all positions of the
            image's features. Among filters of a given norm it is the one whose response
            summed over the image's positions is largest (the sum is ``⟨w, Σ patches⟩``,
            maximal along ``Σ patches``): the fixed point of the gradient ascent the
            authors' code runs to find the filter ``ΔΘ`` a target image activates most.
            ``"centre"``: the centre patch only (a matched filter for one location).
    """
    if region not in ("mean", "centre"):
        raise ValueError(f"region must be 'mean' or 'centre', got {region!r}")
    conv = get_layer(model, conv_name)
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"{conv_name!r} is a {type(conv).__name__}, not a Conv2d")
    if image.dim() != 3:
        raise ValueError(f"expected one image (3, H, W), got shape {tuple(image.shape)}")
    x = conv_inputs(model, conv_name, image[None])[0][0]
    kh, kw = conv.kernel_size
    if region == "mean":
        patches = nn.functional.unfold(x[None], (kh, kw), dilation=conv.dilation,
                                       padding=conv.padding, stride=conv.stride)
        return patches.mean(2)[0].view(x.shape[0], kh, kw).clone()
    h, w = x.shape[-2:]
    r, c = (h - kh) // 2, (w - kw) // 2
    return x[:, r:r + kh, c:c + kw].clone()


def find_bn(model: nn.Module, conv_name: str) -> str:
    """Name of the BatchNorm that follows ``conv_name`` (``conv → bn``, ``convN → bnN``), after
    checking that a ReLU follows that BN directly (Eq. 1)."""
    parent_name, _, child = conv_name.rpartition(".")
    parent = get_layer(model, parent_name) if parent_name else model
    m = re.fullmatch(r"conv(\d*)", child)
    if m is None:
        raise ValueError(f"cannot find the BatchNorm of {conv_name!r}: expected a conv named "
                         "'conv' or 'convN' next to 'bn'/'bnN'; pass bn_name explicitly")
    bn_child = f"bn{m.group(1)}"
    if not isinstance(getattr(parent, bn_child, None), nn.BatchNorm2d):
        raise ValueError(f"{conv_name!r} has no sibling BatchNorm2d {bn_child!r}")
    convs = sorted(int(n[4:]) for n, _ in parent.named_children() if re.fullmatch(r"conv\d+", n))
    if m.group(1) and len(convs) >= 2 and int(m.group(1)) == convs[-1]:
        raise ValueError(
            f"{conv_name!r} is the last conv of a residual block: its ReLU follows the residual "
            f"addition, so Eq. 1 does not hold; valid convs here: "
            f"{[f'{parent_name}.conv{i}' for i in convs[:-1]]}")
    acts = [a for a in (f"act{m.group(1)}", "relu", "act") if hasattr(parent, a)]
    if not acts or not isinstance(getattr(parent, acts[0]), nn.ReLU):
        raise ValueError(f"no ReLU found after {parent_name + '.' if parent_name else ''}"
                         f"{bn_child}; silent units need conv → bn → ReLU")
    return f"{parent_name}.{bn_child}" if parent_name else bn_child


def _resolve(model: nn.Module, name: str) -> tuple[str, str]:
    """``(conv_name, bn_name)`` for a conv name or a ConvBlock name."""
    mod = get_layer(model, name)
    if isinstance(mod, nn.Conv2d):
        return name, find_bn(model, name)
    if isinstance(getattr(mod, "conv", None), nn.Conv2d):
        return f"{name}.conv", find_bn(model, f"{name}.conv")
    raise ValueError(f"layer {name!r} is a {type(mod).__name__}; give a ConvBlock (conv → bn → "
                     "relu) or a Conv2d followed by BatchNorm2d and ReLU")


def _set(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(get_layer(model, parent_name) if parent_name else model, child, new)


@torch.no_grad()
def delta_response(x: Tensor, conv: nn.Conv2d, theta_bar: Tensor) -> Tensor:
    """``Conv(x, Θ̄)`` without bias, ``(B, C_out, H', W')``."""
    return nn.functional.conv2d(x, theta_bar.to(x), None, conv.stride, conv.padding,
                                conv.dilation, conv.groups)


def effective_filter(conv: nn.Conv2d, bn: nn.Module) -> Tensor:
    """``Θ`` folded with the BN scale, ``Θ_c · γ_c / sqrt(var_c + ε)``: ``BN(Conv(x, Θ))``
    equals ``Conv(x, Θ_eff)`` plus a constant per channel. Units whose BN scale is negative
    are maximized by *decreasing* ``Conv(x, Θ)``; folding keeps ``αΘ`` in ``Θ̄`` aligned with
    ``y`` for them. Orthogonality to ``Θ_eff`` is orthogonality to ``Θ`` (a per-unit scalar)."""
    w = conv.weight.detach()
    if not isinstance(bn, nn.BatchNorm2d) or bn.running_var is None:
        return w
    scale = (bn.weight.detach() if bn.affine else torch.ones_like(bn.running_var))
    scale = scale / torch.sqrt(bn.running_var + bn.eps)
    return w * scale.view(-1, 1, 1, 1).to(w)


def silence_block(
    model: nn.Module,
    layer: str,
    natural: Tensor | Iterable[Tensor | Sequence[Tensor]],
    pattern: Tensor | str | None = "visualization",
    alpha: float = 100.0,
    beta: float = 300.0,
    bias: str = "max",
    percentile: float = 99.0,
    margin: float = 1e-3,
    channels: Sequence[int] | None = None,
    batch_size: int = 256,
    inplace: bool = False,
    pattern_unit: int = 0,
    pattern_steps: int = 512,
    pattern_seed: int = 0,
) -> nn.Module:
    """Replace the conv block ``layer`` by its silent-unit version (Eq. 2).

    Args:
        model: the original model (copied unless ``inplace``).
        layer: a ConvBlock name (``"block3"``) or a conv name (``"layer4.1.conv2"``).
        natural: ``(N, 3, H, W)`` natural images that set ``b``, or an iterable of batches
            ``(B, 3, H, W)`` (or ``(images, labels)`` pairs, e.g. a ``DataLoader`` over an
            ImageFolder), read once, so that 50,000 ImageNet images need not be held in
            memory: only their per-unit maxima ``(N, C_out)`` are kept.
        pattern: target pattern for ``ΔΘ⊥``. Default ``"visualization"``, the authors'
            recipe: render unit ``pattern_unit`` of ``layer`` for ``pattern_steps`` steps
            (``render_units``, default ``"lucid"`` preset, as the notebook's lucent fork
            renders its target with a 16-step ReLU warm-up) at the natural images' size and
            take the filter that image activates most (:func:`pattern_from_image`). A tensor
            ``(C_in, kh, kw)`` is shared by all units (whole layer near-identical, Fig. 5),
            ``(C_out, C_in, kh, kw)`` gives one per unit; ``"random"`` (or ``None``) is a
            random Gaussian pattern (seed 0, :func:`random_pattern`). Units whose filter is
            parallel to the pattern get ``ΔΘ⊥ = 0``.
        alpha, beta: ``Θ̄ = αΘ + βΔΘ⊥`` (``ΔΘ⊥`` has the norm of ``Θ`` per unit); ``Θ`` is the
            BN-folded filter (:func:`effective_filter`). The defaults are the notebook's:
            ``weight_factor=100`` (α) and ``lbd=3`` (β = 3α = 300). ``β/α`` sets the balance
            of the two directions once ``Δy`` is on; the overall scale does not change *when*
            ``Δy`` switches on (``b`` scales with it) but makes ``Δy`` dominate the gradient
            once it has. (The notebook rescales ``ΔΘ⊥`` to norm ``‖Θ‖²/‖ΔΘ⊥‖`` and ``Θ̄`` to
            ``‖Θ‖²/‖Θ̄‖`` before the factor 100, so its ``lbd`` equals our ``β/α`` only for
            unit-norm filters; our miniature uses β/α = 10.)
        bias: ``"max"`` (§2.2) or ``"percentile"`` (App. D).
        percentile: the percentile for ``bias="percentile"``.
        margin: relative safety margin of ``bias="max"``.
        channels: manipulate only these output channels (others get ``Θ̄ = 0``, ``b = −1``).
        batch_size: batch size for the natural activations.
        inplace: modify ``model`` itself.
        pattern_unit, pattern_steps, pattern_seed: the rendered target of
            ``pattern="visualization"`` (the notebook renders unit 0 for 2000 steps; 512 is
            C.2's step count).

    Returns:
        The manipulated model, same layer names.

    Bias rule (``bias="max"``): ``b_c = −max_{natural} Conv(x, Θ̄_c)``, the released notebook's
    rule, not the printed Eq. 2 ``b = −(α/β)·ȳ_max,nat``: with the printed rule, ``b`` is a
    fraction of ``y``'s natural maximum and not tied to the response of the new filter ``Θ̄``
    (which is ``≈ α`` times larger), so ``Δy`` opened on every natural image when tried. Only
    the images in ``natural`` are guaranteed bit-identical; measure held-out images with
    :func:`natural_change`.
    """
    if bias not in ("max", "percentile"):
        raise ValueError(f"bias must be 'max' or 'percentile', got {bias!r}")
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    batches = _image_batches(natural, batch_size)
    first = next(batches, None)
    if first is None:
        raise ValueError("silence_block needs natural images to set the bias; got none")
    batches = itertools.chain([first], batches)
    net = model if inplace else copy.deepcopy(model)
    conv_name, bn_name = _resolve(net, layer)
    conv: nn.Conv2d = get_layer(net, conv_name)  # type: ignore[assignment]
    bn = get_layer(net, bn_name)
    if pattern is None or (isinstance(pattern, str) and pattern == "random"):
        pattern = random_pattern(conv)
    elif isinstance(pattern, str):
        if pattern != "visualization":
            raise ValueError(f"pattern must be a tensor, 'visualization' or 'random', "
                             f"got {pattern!r}")
        if pattern_steps < 1:
            raise ValueError(f"pattern_steps must be >= 1, got {pattern_steps}")
        from lightning_fv.optvis.render import render_units

        target = render_units(model, [f"{layer}:{pattern_unit}"], seed=pattern_seed,
                              thresholds=(pattern_steps,),
                              image_size=tuple(first.shape[-2:])).final[0]
        pattern = pattern_from_image(net, conv_name, target)
    theta = effective_filter(conv, bn)
    perp = orthogonal_perturbation(theta, pattern.to(theta), on_parallel="zero")
    theta_bar = alpha * theta + beta * perp
    if channels is not None:
        keep = torch.zeros(theta.shape[0], dtype=torch.bool)
        keep[list(channels)] = True
        theta_bar = torch.where(keep.view(-1, 1, 1, 1).to(theta.device), theta_bar,
                                torch.zeros_like(theta_bar))
    maxima = torch.cat([delta_response(x, conv, theta_bar).amax(dim=(2, 3))
                        for images in batches
                        for x in conv_inputs(net, conv_name, images, batch_size)])  # (N, C)
    if bias == "max":
        m = maxima.amax(0)
        b = -(m + margin * m.abs() + 1e-6)
    else:
        b = -torch.quantile(maxima.double(), percentile / 100.0, dim=0).to(maxima.dtype)
    if channels is not None:
        b = torch.where(keep.to(b.device), b, torch.full_like(b, -1.0))
    _set(net, conv_name, SilentUnits(conv, bn, theta_bar, b))
    _set(net, bn_name, nn.Identity())
    specs = list(getattr(net, "fv_manipulations", []))
    specs.append({"kind": "silent", "layer": layer, "conv": conv_name, "bn": bn_name})
    net.fv_manipulations = specs
    return net


def _image_batches(natural: Tensor | Iterable[Tensor | Sequence[Tensor]],
                   batch_size: int) -> Iterator[Tensor]:
    """``(B, 3, H, W)`` batches of a tensor of images, or of an iterable of batches (the
    first entry of ``(images, labels)`` pairs)."""
    if isinstance(natural, Tensor):
        yield from natural.split(batch_size)
        return
    for batch in natural:
        yield batch if isinstance(batch, Tensor) else batch[0]


def silent_modules(model: nn.Module) -> dict[str, SilentUnits]:
    """``name → SilentUnits`` of a manipulated model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, SilentUnits)}


@torch.no_grad()
def natural_change(model: nn.Module, images: Tensor, batch_size: int = 256) -> dict[str, float]:
    """How much the silent units change natural input: for every :class:`SilentUnits`, the
    fraction of images with any non-zero ``Δy`` and the largest ``|Δy|``."""
    out: dict[str, float] = {}
    for name, mod in silent_modules(model).items():
        xs = conv_inputs(model, name, images, batch_size)
        active, mx = 0, 0.0
        for x in xs:
            d = torch.relu(mod.delta(x)).flatten(1)
            active += int((d > 0).any(1).sum())
            mx = max(mx, float(d.max()) if d.numel() else 0.0)
        out[f"{name}/active_fraction"] = active / max(images.shape[0], 1)
        out[f"{name}/max_delta"] = mx
    return out


__all__ = [
    "SilentUnits",
    "conv_inputs",
    "delta_response",
    "effective_filter",
    "find_bn",
    "natural_change",
    "orthogonal_perturbation",
    "pattern_from_image",
    "pattern_from_unit",
    "random_pattern",
    "silence_block",
    "silent_modules",
]
