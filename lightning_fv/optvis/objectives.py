"""Objectives (Lucent's ``objectives``): per-sample values to *maximize*, composable.

An :class:`Objective` maps the recorded activations to a ``(B,)`` tensor, one value per
image of the batch. Objectives add, subtract and scale (``a + b``, ``a - 0.1 * b``).

Unit indices may be a single int (the same unit for every sample) or a sequence of ``B``
ints, so one batch can visualize ``B`` different units at once (sample ``i`` maximizes its
own unit); that is what :func:`lightning_fv.optvis.render.render_units` uses.

Special keys: ``OUTPUT`` is the model's output (logits), ``INPUT`` the parameterized
image before transforms (for regularizers).

Every layer objective reads its activation through
:func:`lightning_fv.optvis.layout.channels_first` in the layout recorded with it (conv
maps, tokens, channels-last maps, vectors), so a channel index is a feature channel in
every layout and "over positions" means over the spatial positions or the patch tokens,
prefix tokens (CLS, registers) excluded.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_fv.optvis.hooks import INPUT_KEY, OUTPUT_KEY, Unit, check_unit_index, parse_unit
from lightning_fv.optvis.layout import (
    Layout,
    channels_first,
    layout_of,
    prefix_index,
    prefix_tokens,
)

OUTPUT = OUTPUT_KEY
INPUT = INPUT_KEY

Index = int | Sequence[int] | Tensor


class Objective:
    """A differentiable per-sample objective ``acts → (B,)`` with the layers it reads.

    Args:
        fn: callable taking the activation mapping (layer name → tensor, plus
            :data:`OUTPUT` / :data:`INPUT`) and returning ``(B,)`` values.
        layers: the layer names ``fn`` reads (hooks are registered for these only).
        name: a readable description.
    """

    def __init__(self, fn: Callable[[dict[str, Tensor]], Tensor], layers: Iterable[str] = (),
                 name: str = "objective") -> None:
        self.fn = fn
        self.layers = tuple(dict.fromkeys(layers))
        self.name = name

    def __call__(self, acts: dict[str, Tensor]) -> Tensor:
        out = self.fn(acts)
        if out.dim() != 1:
            raise ValueError(f"objective {self.name} must return (B,) values, "
                             f"got {tuple(out.shape)}")
        return out

    @property
    def model_layers(self) -> tuple[str, ...]:
        """Layers that need a forward hook (the special keys excluded)."""
        return tuple(n for n in self.layers if n not in (OUTPUT, INPUT))

    def __add__(self, other: Objective | float) -> Objective:
        if isinstance(other, (int, float)):
            return Objective(lambda a: self(a) + other, self.layers, f"{self.name} + {other}")
        return Objective(lambda a: self(a) + other(a), self.layers + other.layers,
                         f"{self.name} + {other.name}")

    __radd__ = __add__

    def __neg__(self) -> Objective:
        return Objective(lambda a: -self(a), self.layers, f"-({self.name})")

    def __sub__(self, other: Objective | float) -> Objective:
        return self + (-other)

    def __rsub__(self, other: float) -> Objective:
        return (-self) + other

    def __mul__(self, c: float) -> Objective:
        if not isinstance(c, (int, float)):
            raise TypeError(f"objectives scale by numbers only, got {type(c).__name__}")
        return Objective(lambda a: c * self(a), self.layers, f"{c} * {self.name}")

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return f"Objective({self.name})"


def _index(idx: Index, b: int, device: torch.device) -> Tensor:
    t = torch.as_tensor(idx, device=device, dtype=torch.long)
    if t.dim() == 0:
        return t.expand(b)
    if t.shape != (b,):
        raise ValueError(f"got {t.numel()} unit indices for a batch of {b} images")
    return t


def _check(layer: str, idx: Index, act: Tensor, layout: Layout | None = None) -> None:
    """Range-check unit indices of ``act`` read in ``layout``; uses Python values when
    given, so no device sync."""
    if isinstance(idx, Tensor):
        if idx.device.type != "cpu":
            return  # already checked on the CPU when the objective was built/first called
        values = idx.flatten().tolist()
    else:
        values = [idx] if isinstance(idx, int) else list(idx)
    if values:
        check_unit_index(Unit(layer, int(min(values))), act, layout)
        check_unit_index(Unit(layer, int(max(values))), act, layout)


def _pick_channel(act: Tensor, idx: Tensor) -> Tensor:
    """``act[i, idx[i]]`` for every sample: ``(B, ...)``."""
    return act[torch.arange(act.shape[0], device=act.device), idx]


def _features(a: dict[str, Tensor], layer: str) -> tuple[Tensor, Tensor, Layout]:
    """``(recorded activation, its (B, C, H, W) / (B, C) channels-first view, layout)``."""
    act = a[layer]
    lay = layout_of(a, layer)
    return act, channels_first(act, lay), lay


def channel(layer: str, n: Index) -> Objective:
    """Mean activation of channel ``n`` over all spatial positions or patch tokens (prefix
    tokens excluded; Lucent ``channel``)."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        act, feats, lay = _features(a, layer)
        _check(layer, n, act, lay)
        idx = _index(n, act.shape[0], act.device)
        picked = _pick_channel(feats, idx)
        return picked.flatten(1).mean(1) if picked.dim() > 1 else picked

    return Objective(fn, [layer], f"channel({layer}:{n})")


def neuron(layer: str, n: Index, x: int | None = None, y: int | None = None,
           token: str | None = None) -> Objective:
    """Activation of channel ``n`` at one spatial position / patch-grid cell (row ``y``,
    column ``x``; default: the centre), or on the prefix token ``token`` (``"cls"``,
    ``"reg0"``, ``"prefix<k>"``) of a token layout."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        act, feats, lay = _features(a, layer)
        _check(layer, n, act, lay)
        idx = _index(n, act.shape[0], act.device)
        if token is not None:
            k = prefix_index(lay, token, layer)
            return _pick_channel(prefix_tokens(act, lay)[:, k], idx)
        if feats.dim() == 2:
            return _pick_channel(feats, idx)
        h, w = feats.shape[-2:]
        yy = h // 2 if y is None else y
        xx = w // 2 if x is None else x
        check_unit_index(Unit(layer, 0, (yy, xx)), act, lay)
        return _pick_channel(feats[..., yy, xx], idx)

    where = f"@{token}" if token is not None else f"@{x},{y}"
    return Objective(fn, [layer], f"neuron({layer}:{n}{where})")


def unit(spec: str | Unit) -> Objective:
    """An objective from a Lucent-style name: ``"fc:3"`` (channel; for a 2-D output the
    neuron), ``"block3:5@4,4"`` (neuron at row 4, column 4) or ``"blocks.5:3@cls"`` (the
    CLS token's channel 3)."""
    u = parse_unit(spec)
    if u.position is None:
        return channel(u.layer, u.index)
    if isinstance(u.position, str):
        return neuron(u.layer, u.index, token=u.position)
    return neuron(u.layer, u.index, x=u.position[1], y=u.position[0])


def layer_l2(layer: str) -> Objective:
    """Mean squared activation of a whole layer ("deep dream"; patch tokens only)."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        return _features(a, layer)[1].pow(2).flatten(1).mean(1)

    return Objective(fn, [layer], f"layer_l2({layer})")


deepdream = layer_l2


def direction(layer: str, vec: Tensor) -> Objective:
    """Cosine similarity between ``vec`` ``(C,)`` or ``(B, C)`` and the activation vector at
    each position, averaged over positions (Lucent ``direction``)."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        act = _features(a, layer)[1]
        v = vec.to(act.device, act.dtype)
        v = v.expand(act.shape[0], -1) if v.dim() == 1 else v
        if v.shape[1] != act.shape[1]:
            raise ValueError(f"direction has {v.shape[1]} entries, layer {layer!r} has "
                             f"{act.shape[1]} channels")
        v = v.reshape(*v.shape, *([1] * (act.dim() - 2)))
        return F.cosine_similarity(act, v, dim=1).flatten(1).mean(1) if act.dim() > 2 else \
            F.cosine_similarity(act, v, dim=1)

    return Objective(fn, [layer], f"direction({layer})")


def check_maxpool_size(act: Tensor) -> None:
    """Raise a ``ValueError`` naming the size when ``(B, C, H, W)`` activations are too small
    for the 3×3 max pooling of the ``"maxpool_mean"`` aggregation."""
    h, w = act.shape[-2:]
    if h < 3 or w < 3:
        raise ValueError(
            f"aggregation 'maxpool_mean' pools 3×3 windows but the layer's activations are "
            f"{h}×{w}; use larger images or aggregation='mean' / 'center'")


def aggregate(act: Tensor, aggregation: str = "maxpool_mean",
              layout: Layout | None = None) -> Tensor:
    """Feature response ``y`` ``(B, C)`` from activations ``(B, C, H, W)`` or ``(B, C)``
    (or any layout: with ``layout`` given, ``act`` is first read channels-first, so token
    activations are pooled over the patch grid, prefix tokens excluded).

    `inverse-feature-visualization` §2.3: ``"maxpool_mean"`` (3×3 max pooling, stride 1,
    then the spatial mean; the paper's default), ``"mean"``, ``"center"`` (the centre
    position), ``"identity"`` (for ``(B, C)`` activations).
    """
    if layout is not None:
        act = channels_first(act, layout)
    if act.dim() == 2:
        if aggregation not in ("identity", "maxpool_mean", "mean", "center"):
            raise ValueError(f"unknown aggregation {aggregation!r}; valid: maxpool_mean, "
                             "mean, center, identity")
        return act
    if aggregation == "maxpool_mean":
        check_maxpool_size(act)
        return F.max_pool2d(act, 3, stride=1).mean((-2, -1))
    if aggregation == "mean":
        return act.mean((-2, -1))
    if aggregation == "center":
        h, w = act.shape[-2:]
        return act[..., h // 2, w // 2]
    raise ValueError(
        f"unknown aggregation {aggregation!r}; valid: maxpool_mean, mean, center, identity"
    )


def cosine_power_value(x: Tensor, y: Tensor, k: float = 2.0, eps: float = 1e-12) -> Tensor:
    """``S_x(y) = xᵀy · (xᵀy / ‖y‖)^k`` per sample (`inverse-feature-visualization` §2).

    Args:
        x: target objective ``(n_f,)`` or ``(B, n_f)`` (unit norm in the paper).
        y: feature response ``(B, n_f)``.
        k: cosine power (paper default 2; 0 gives the plain projection ``xᵀy``).
    """
    x = x.to(y.dtype)
    xy = (y * x).sum(-1) if x.dim() == 2 else y @ x
    if k == 0:
        return xy
    cos = xy / y.norm(dim=-1).clamp_min(eps)
    return xy * cos.pow(k)


def cosine_power(layer: str, x: Tensor, k: float = 2.0,
                 aggregation: str = "maxpool_mean") -> Objective:
    """The direction objective ``S_x(Agg(N(I)))`` of `inverse-feature-visualization` §2,
    with the aggregation of §2.3. ``x`` is ``(n_f,)`` or ``(B, n_f)`` (one target per
    sample)."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        y = aggregate(_features(a, layer)[1], aggregation)
        xt = x.to(y.device)
        if xt.shape[-1] != y.shape[-1]:
            raise ValueError(f"target has {xt.shape[-1]} entries, layer {layer!r} has "
                             f"{y.shape[-1]} features")
        return cosine_power_value(xt, y, k)

    return Objective(fn, [layer], f"cosine_power({layer}, k={k})")


def class_logit(n: Index) -> Objective:
    """The model output (logit) of class ``n``."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        out = a[OUTPUT]
        _check("output", n, out)
        idx = _index(n, out.shape[0], out.device)
        return _pick_channel(out, idx)

    return Objective(fn, [OUTPUT], f"class_logit({n})")


def class_log_prob(n: Index) -> Objective:
    """``log softmax(logits)[n]``: the log-probability of class ``n``
    (`activation-maximization-notes`, probabilistic interpretation)."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        out = a[OUTPUT].float().log_softmax(-1)
        _check("output", n, out)
        idx = _index(n, out.shape[0], out.device)
        return _pick_channel(out, idx)

    return Objective(fn, [OUTPUT], f"class_log_prob({n})")


def diversity(layer: str) -> Objective:
    """Lucent's diversity term: minus the mean cosine similarity between the (flattened,
    normalized) Gram matrix of a sample's activations and those of the other samples.

    This term couples the samples of a batch (use it only when the batch holds several
    images of the same unit)."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        act = _features(a, layer)[1]
        b, c = act.shape[:2]
        flat = act.reshape(b, c, -1).float()
        gram = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
        sim = gram @ gram.T
        off = sim.sum(1) - sim.diagonal()
        return -off / max(1, b - 1)

    return Objective(fn, [layer], f"diversity({layer})")


def l1(constant: float = 0.0) -> Objective:
    """Minus ``mean |x − constant|`` of the image (a penalty to add to an objective)."""
    return Objective(lambda a: -(a[INPUT] - constant).abs().flatten(1).mean(1), [INPUT],
                     f"l1({constant})")


def l2(constant: float = 0.0) -> Objective:
    """Minus ``Σ (x − constant)²`` over each image ``(B,)``: already a penalty, so add it
    scaled by a positive weight to penalize the squared norm, ``obj + l2() * λ`` (the
    maximized objective is then ``obj − λ‖x − constant‖²``)."""
    return Objective(lambda a: -(a[INPUT] - constant).pow(2).flatten(1).sum(1), [INPUT],
                     f"l2({constant})")


def total_variation() -> Objective:
    """Minus the anisotropic total variation ``Σ|Δ_h x| + Σ|Δ_w x|`` per image, divided by
    the number of pixels."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        x = a[INPUT]
        dh = (x[..., 1:, :] - x[..., :-1, :]).abs().flatten(1).sum(1)
        dw = (x[..., :, 1:] - x[..., :, :-1]).abs().flatten(1).sum(1)
        return -(dh + dw) / x[0].numel()

    return Objective(fn, [INPUT], "total_variation")


def gaussian_blur(x: Tensor, sigma: float, padding: str = "replicate") -> Tensor:
    """Separable Gaussian blur of images ``(B, C, H, W)``: standard deviation ``sigma``
    pixels, radius ``max(1, round(3σ))``, edges padded by ``padding`` (``"replicate"`` or
    ``"reflect"``). Same shape out."""
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0 pixels, got {sigma}")
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    c = x.shape[1]
    kw = k1.view(1, 1, 1, -1).expand(c, 1, 1, -1)
    kh = k1.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    xb = F.conv2d(F.pad(x, (r, r, 0, 0), mode=padding), kw, groups=c)
    return F.conv2d(F.pad(xb, (0, 0, r, r), mode=padding), kh, groups=c)


def blur(sigma: float = 0.5) -> Objective:
    """Minus ``mean (x − G_σ * x)²``: penalizes high frequencies (a smooth version of
    Lucent's ``blur_input_each_step``)."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        x = a[INPUT]
        return -(x - gaussian_blur(x, sigma)).pow(2).flatten(1).mean(1)

    return Objective(fn, [INPUT], f"blur({sigma})")


def as_objective(obj: Objective | str | Unit | Callable[[dict[str, Tensor]], Tensor]) -> Objective:
    """Coerce a unit name (``"fc:3"``), :class:`Unit` or objective into an :class:`Objective`."""
    if isinstance(obj, Objective):
        return obj
    if isinstance(obj, (str, Unit)):
        return unit(obj)
    if callable(obj):
        return Objective(obj, [], getattr(obj, "__name__", "callable"))
    raise TypeError(f"cannot make an objective from {type(obj).__name__}")


def units_objective(units: Sequence[str | Unit]) -> Objective:
    """Sample ``i`` maximizes ``units[i]``; units may live in different layers.

    Channel units use the mean over spatial positions / patch tokens (prefix tokens
    excluded); units with a position use that neuron (patch-grid cell); units with a
    prefix-token position (``"@cls"``) use that token; units of a 2-D layer (e.g.
    ``"fc:3"``) use the neuron itself.
    """
    parsed = [parse_unit(u) for u in units]
    layers = list(dict.fromkeys(u.layer for u in parsed))
    plan = []  # per layer: rows, channel indices, (row-in-group, r, c) of positioned units
    tokens: dict[str, list[tuple[int, str]]] = {}  # per layer: (row-in-group, prefix name)
    for layer in layers:
        rows = [i for i, u in enumerate(parsed) if u.layer == layer]
        pos = [(j, *parsed[i].position) for j, i in enumerate(rows)
               if isinstance(parsed[i].position, tuple)]
        tokens[layer] = [(j, parsed[i].position) for j, i in enumerate(rows)
                         if isinstance(parsed[i].position, str)]
        plan.append((layer, rows, [parsed[i].index for i in rows], pos))
    cache: dict[torch.device, list[tuple[Tensor, ...]]] = {}
    checked: set[tuple[str, tuple[int, ...]]] = set()

    def fn(a: dict[str, Tensor]) -> Tensor:
        b = len(parsed)
        device = a[parsed[0].layer].device
        if device not in cache:
            cache[device] = [
                tuple(torch.tensor(v, device=device, dtype=torch.long)
                      for v in (rows, idx, [p[0] for p in pos], [p[1] for p in pos],
                                [p[2] for p in pos]))
                for _, rows, idx, pos in plan
            ]
        out = torch.empty(b, device=device, dtype=torch.float32)
        for (layer, _rows, idx, pos), tensors in zip(plan, cache[device]):
            act, feats, lay = _features(a, layer)
            if act.shape[0] != b:
                raise ValueError(f"batch of {act.shape[0]} images for {b} units")
            key = (layer, tuple(act.shape[1:]))
            if key not in checked:  # Python-side range checks, once per layer shape
                _check(layer, idx, act, lay)
                for _, r, c in pos:
                    check_unit_index(Unit(layer, 0, (r, c)), act, lay)
                for _, name in tokens[layer]:
                    check_unit_index(Unit(layer, 0, name), act, lay)
                checked.add(key)
            rows_t, idx_t, js, rr, cc = tensors
            picked = feats[rows_t, idx_t]
            if picked.dim() == 1:
                vals = picked
            else:
                vals = picked.flatten(1).mean(1)
                if pos:
                    vals = vals.index_put((js,), picked[js, rr, cc])
            if tokens[layer]:
                pre = prefix_tokens(act, lay)
                for j, name in tokens[layer]:
                    vals = vals.index_put((torch.tensor([j], device=device),), pre[
                        rows_t[j], prefix_index(lay, name, layer), idx_t[j]].reshape(1))
            out = out.index_put((rows_t,), vals.float())
        return out

    return Objective(fn, layers, f"units({len(parsed)})")
