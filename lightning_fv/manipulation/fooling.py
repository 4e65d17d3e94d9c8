"""The fooling circuit of `dont-trust-your-eyes…` §2.1, Fig. 4 and App. B.1 (Lemma 1–2).

A unit ``A`` is inserted in place of unit ``F`` of a layer. On natural input it answers
exactly like ``F``; under feature visualization it answers like another unit ``D`` (of
the same layer, Fig. 2), or like a new unit ``D'`` whose single convolution filter is an
arbitrary image (App. C.2, the "Mona Lisa" of Fig. 1). Six units make the circuit:

- ``E``: the visualization detector (:class:`~lightning_fv.manipulation.detector_net.DetectorCNN`,
  App. C.1) on the network input, thresholded to ``z = 1`` (natural) or ``0`` (visualization);
- ``D``, ``F``: the existing units (or ``D'``);
- ``B = ReLU(D − k·z)``, ``C = ReLU(F − k·(1 − z))``;
- ``A = B + C``.

With ``k ≥ max(D, F)`` (Lemma 1), ``A = F`` whenever ``z = 1`` and ``A = D`` whenever
``z = 0``; the large constant ``k`` sends the gradient through only one of the branches.
``C`` is written ``F − k(1 − z)`` instead of the paper's ``F + kz − k``: the two are equal,
but only the first is exact in floating point (``(F + k) − k ≠ F`` when ``k ≫ F``), which
makes the manipulated unit equal to ``F`` bit for bit on natural input. (Lemma 2 as printed
gates ``C`` with ``¬E``; with ``E = 1`` for natural input as in §2.1 the gate of ``C`` must
be ``E`` itself, which is what we do.)

**Signs.** Lemma 1 needs ``D, F ≥ 0`` (units after a ReLU). For signed units (logits,
pre-activations) choose ``mode``:

- ``"relu"`` (default): units must be non-negative; a negative value raises.
- ``"split"``: each signed unit is written as ``ReLU(u) − ReLU(−u)`` and both halves go through
  their own ``B``/``C`` pair (four gated units instead of two). Exact for any sign.
- ``"offset"``: ``A = ReLU(D + o − kz) + ReLU(F + o − k(1 − z)) − o`` with an offset ``o``
  making ``F + o, D + o ≥ 0`` (set ``o`` to minus the smallest natural value). Equal to
  ``F`` up to one rounding of ``(F + o) − o``; values below ``−o`` are clipped.

**Input space.** The gate sees the model's own input (after the feature-visualization
transforms, before any normalization inside the model). Inputs of a size other than the
detector's are resized to it (padding transforms change the canvas size).

The manipulated model keeps every layer name, so ``render_units(model, ["fc:3"])`` renders
the deceptive unit. The detector is stored in the module ``fooling_gate`` of the root; a
forward pre-hook on the root hands it the input.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fv.manipulation.detector_net import DetectorCNN
from lightning_fv.optvis.hooks import get_layer, record

MODES = ("relu", "split", "offset")
GATE_NAME = "fooling_gate"


class KTooSmallError(ValueError):
    """``k`` does not exceed the suppressed branch of a fooling circuit (Lemma 1 violated)."""


def lemma1(x: Tensor, y: Tensor, z: Tensor, k: float) -> Tensor:
    """``N(x, y, z) = A(B(x, z), C(y, z))`` of Lemma 1 (App. B.1), element-wise.

    ``B(x, z) = max(0, x − kz)``, ``C(y, z) = max(0, y − k(1 − z))`` (the paper's
    ``y + kz − k``, rearranged to be exact in floating point), ``A = B + C``. For
    ``x, y ≥ 0`` and ``k ≥ max(x, y)``: ``N(x, y, 0) = x`` and ``N(x, y, 1) = y`` exactly.
    """
    z = z.to(x.dtype)
    return torch.relu(x - k * z) + torch.relu(y - k * (1 - z))


def _gate_branches(d: Tensor, f: Tensor, z: Tensor, k: Tensor, mode: str,
                   offset: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``A`` and the pre-activations of the suppressed branches (for the ``k`` check)."""
    kz, kn = k * z, k * (1 - z)
    if mode == "relu":
        a = torch.relu(d - kz) + torch.relu(f - kn)
        mag_d, mag_f = d, f
    elif mode == "split":
        a = (torch.relu(d - kz) - torch.relu(-d - kz)) + (torch.relu(f - kn) - torch.relu(-f - kn))
        mag_d, mag_f = d.abs(), f.abs()
    else:
        a = torch.relu(d + offset - kz) + torch.relu(f + offset - kn) - offset
        mag_d, mag_f = d + offset, f + offset
    return a, mag_d, mag_f


class InputGate(nn.Module):
    """Unit ``E`` of Fig. 4: ``z = 1[detector(x) > threshold]`` on the network input ``x``.

    ``z`` is a step function of the input (its gradient is zero), so optimization never
    acts on the gate. Call :meth:`observe` (done by a forward pre-hook on the root model)
    before the gated layers run; ``override`` forces ``z`` (1 = natural) for testing a
    perfect gate.
    """

    def __init__(self, detector: DetectorCNN, threshold: float = 0.0) -> None:
        super().__init__()
        self.detector = detector
        self.threshold = float(threshold)
        self.override: float | None = None
        self.z: Tensor | None = None
        self.input: Tensor | None = None

    @torch.no_grad()
    def gate(self, x: Tensor) -> Tensor:
        """``(B,)`` in {0, 1} (dtype of ``x``): 1 = natural image, 0 = visualization."""
        if self.override is not None:
            return torch.full((x.shape[0],), float(self.override), dtype=x.dtype, device=x.device)
        logits = self.detector.resized(x.to(next(self.detector.parameters()).dtype))
        return (logits > self.threshold).to(x.dtype)

    def observe(self, _module: nn.Module, args: tuple[object, ...]) -> None:
        x = args[0]
        if not isinstance(x, Tensor) or x.dim() != 4:
            raise TypeError("the fooling gate needs a (B, C, H, W) tensor as the model input")
        self.input = x
        self.z = self.gate(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.gate(x)


class FoolingLayer(nn.Module):
    """A layer whose selected units are replaced by fooling circuits (Fig. 4).

    Output channel ``c`` with ``mask[c]`` becomes ``A_c`` with ``F = y[:, c]`` and
    ``D = [y, D'](:, source[c])``: ``source[c] < C`` picks a unit of the same layer, ``C + j``
    the embedded-image unit ``D'_j``. Other channels pass unchanged.

    Args:
        layer: the original layer (output ``(B, C, ...)``).
        gate: the shared :class:`InputGate` (not registered here, it lives on the root).
        source, mask: ``(C,)`` long and bool.
        embedded: ``(J, 3, h, w)`` filters of the ``D'`` units (may be empty).
        k, mode, offset: see the module docstring.
        strict_k: raise :class:`KTooSmallError` when a suppressed branch exceeds ``k``;
            otherwise only count it in ``violations``.
    """

    def __init__(self, layer: nn.Module, gate: InputGate, source: Tensor, mask: Tensor,
                 embedded: Tensor | None = None, k: float = 1e4, mode: str = "relu",
                 offset: float = 0.0, strict_k: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; valid: {MODES}")
        if k <= 0:
            raise ValueError(f"k must be > 0, got {k}")
        self.layer = layer
        self.__dict__["_gate"] = gate  # shared with the root, not a child
        self.mode = mode
        self.strict_k = strict_k
        self.register_buffer("source", source.long().clone())
        self.register_buffer("mask", mask.bool().clone())
        emb = embedded if embedded is not None else torch.zeros(0, 3, 1, 1)
        self.register_buffer("embedded", emb.float().clone())
        self.register_buffer("k", torch.tensor(float(k)))
        self.register_buffer("offset", torch.tensor(float(offset)))
        self.violations = 0
        self.max_suppressed = {"natural": 0.0, "visualization": 0.0}
        self.last_violation = ""

    @property
    def gate(self) -> InputGate:
        return self.__dict__["_gate"]

    def embedded_units(self, x: Tensor) -> Tensor:
        """``D'_j(x) = ReLU(⟨resize(x), W_j⟩)``: ``(B, J)`` for the root input ``x``."""
        j, _, h, w = self.embedded.shape
        if j == 0:
            return x.new_zeros(x.shape[0], 0)
        if tuple(x.shape[-2:]) != (h, w):
            x = F.interpolate(x, size=(h, w), mode="bilinear", antialias=True, align_corners=False)
        return torch.relu(torch.einsum("bchw,jchw->bj", x, self.embedded.to(x.dtype)))

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        y = self.layer(*args, **kwargs)
        g = self.gate
        if g.z is None or g.z.shape[0] != y.shape[0]:
            raise RuntimeError(
                "fooling gate has no decision for this batch: call the manipulated model on "
                "its input (the gate sees the root input), not the layer alone")
        c = y.shape[1]
        if self.source.numel() != c:
            raise ValueError(f"fooling layer built for {self.source.numel()} units, layer has {c}")
        pool = y
        if self.embedded.shape[0]:
            emb = self.embedded_units(g.input)  # (B, J)
            emb = emb.view(*emb.shape, *([1] * (y.dim() - 2))).expand(-1, -1, *y.shape[2:])
            pool = torch.cat([y, emb.to(y.dtype)], dim=1)
        d = pool[:, self.source]
        z = g.z.to(y.dtype).view(-1, *([1] * (y.dim() - 1)))
        a, mag_d, mag_f = _gate_branches(d, y, z, self.k.to(y.dtype), self.mode,
                                         self.offset.to(y.dtype))
        self._check(y, d, z, mag_d, mag_f)
        m = self.mask.view(1, -1, *([1] * (y.dim() - 2)))
        return torch.where(m, a, y)

    @torch.no_grad()
    def _check(self, y: Tensor, d: Tensor, z: Tensor, mag_d: Tensor, mag_f: Tensor) -> None:
        sel = self.mask
        if self.mode == "relu":
            neg = torch.minimum(y[:, sel].min() if sel.any() else y.new_tensor(0.0),
                                d[:, sel].min() if sel.any() else y.new_tensor(0.0))
            if neg < 0:
                raise ValueError(
                    f"fooling circuit in mode 'relu' needs non-negative units (Lemma 1), got "
                    f"{float(neg):.4g}; use mode='split' (exact) or mode='offset'")
        nat = (z > 0.5).expand_as(d)[:, sel]
        sup_nat = mag_d[:, sel][nat]  # D is suppressed on natural input
        sup_vis = mag_f[:, sel][~nat]  # F is suppressed under visualization
        k = float(self.k)
        for key, v in (("natural", sup_nat), ("visualization", sup_vis)):
            if v.numel():
                mx = float(v.max())
                self.max_suppressed[key] = max(self.max_suppressed[key], mx)
                if mx > k:
                    self.violations += int((v > k).sum())
                    branch = "D" if key == "natural" else "F"
                    self.last_violation = (
                        f"k={k:.4g} is too small: suppressed branch {branch} reaches {mx:.4g} on "
                        f"{key} input (Lemma 1 needs k >= max(D, F)); raise k")
                    if self.strict_k:
                        raise KTooSmallError(self.last_violation)


@dataclass
class KReport:
    """Result of :func:`check_k`: largest suppressed-branch value per layer and input kind."""

    k: dict[str, float]
    max_suppressed: dict[str, dict[str, float]]
    violations: dict[str, int]
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(self.violations.values())


def fooling_layers(model: nn.Module) -> dict[str, FoolingLayer]:
    """``name → FoolingLayer`` of a manipulated model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, FoolingLayer)}


@torch.no_grad()
def check_k(model: nn.Module, *inputs: Tensor, batch_size: int = 256) -> KReport:
    """Run ``inputs`` (natural images and/or visualizations, ``(N, 3, H, W)``) through a
    manipulated model and report whether ``k`` exceeded every suppressed branch (Lemma 1).
    The counters are reset first."""
    layers = fooling_layers(model)
    if not layers:
        raise ValueError("model has no fooling circuit")
    for m in layers.values():
        m.violations, m.last_violation = 0, ""
        m.max_suppressed = {"natural": 0.0, "visualization": 0.0}
    for x in inputs:  # the gates observe every forward; nothing needs recording
        record(model, [], x, batch_size=batch_size)
    return KReport(
        k={n: float(m.k) for n, m in layers.items()},
        max_suppressed={n: dict(m.max_suppressed) for n, m in layers.items()},
        violations={n: m.violations for n, m in layers.items()},
        messages=[f"{n}: {m.last_violation}" for n, m in layers.items() if m.last_violation],
    )


def _set_layer(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = get_layer(model, parent_name) if parent_name else model
    setattr(parent, child, new)


def _ensure_gate(model: nn.Module, detector: DetectorCNN | None, threshold: float) -> InputGate:
    gate = getattr(model, GATE_NAME, None)
    if isinstance(gate, InputGate):
        if detector is not None and gate.detector is not detector:
            raise ValueError("model already has a fooling gate with another detector")
        return gate
    if detector is None:
        raise ValueError("a detector (unit E) is needed for the first fooling circuit")
    gate = InputGate(detector.eval(), threshold)
    model.add_module(GATE_NAME, gate)
    model.register_forward_pre_hook(gate.observe)
    return gate


def _embedding_filter(image: Tensor) -> Tensor:
    """App. C.2: an image as a single conv filter, divided by its number of pixels; we also
    subtract the per-channel mean so that the filter is not maximized by a white image."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"embedded image must be (3, h, w), got {tuple(image.shape)}")
    img = image.float()
    return (img - img.mean(dim=(1, 2), keepdim=True)) / (img.shape[1] * img.shape[2])


def install_fooling_circuit(
    model: nn.Module,
    layer: str,
    detector: DetectorCNN | None,
    targets: Mapping[int, int | Tensor],
    k: float = 1e4,
    mode: str = "relu",
    offset: float = 0.0,
    threshold: float = 0.0,
    strict_k: bool = False,
    inplace: bool = False,
) -> nn.Module:
    """Give units of ``layer`` a fooling circuit (§2.1, Fig. 4).

    Args:
        model: the original model (copied unless ``inplace``).
        layer: module name whose output ``(B, C, ...)`` holds the units.
        detector: unit ``E`` (App. C.1); may be ``None`` if the model already has a gate.
        targets: ``F index → D``: an int (unit ``D`` of the same layer, Fig. 2) or a
            ``(3, h, w)`` image in [0, 1] (a new unit ``D'`` with that image as its filter).
        k: Lemma 1's constant; must exceed ``D`` on natural and ``F`` on visualization input
            (see :func:`check_k`).
        mode: ``"relu"``, ``"split"`` or ``"offset"`` (module docstring).
        offset: the offset of ``mode="offset"``.
        threshold: detector logit above which an input counts as natural.
        strict_k: raise :class:`KTooSmallError` on a ``k`` violation during forward.
        inplace: modify ``model`` itself.

    Returns:
        The manipulated model (same layer names; ``fooling_gate`` added).
    """
    net = model if inplace else copy.deepcopy(model)
    target_layer = get_layer(net, layer)
    if isinstance(target_layer, FoolingLayer):
        raise ValueError(f"layer {layer!r} already has a fooling circuit")
    out = _probe_channels(net, layer, target_layer)
    gate = _ensure_gate(net, detector, threshold)
    source = torch.arange(out)
    mask = torch.zeros(out, dtype=torch.bool)
    filters: list[Tensor] = []
    for f_idx, d in targets.items():
        f_idx = int(f_idx)
        if not 0 <= f_idx < out:
            raise IndexError(f"unit {f_idx} out of range for layer {layer!r} with {out} units")
        if isinstance(d, Tensor):
            filters.append(_embedding_filter(d))
            source[f_idx] = out + len(filters) - 1
        else:
            if not 0 <= int(d) < out:
                raise IndexError(f"target unit {d} out of range for layer {layer!r} ({out} units)")
            source[f_idx] = int(d)
        mask[f_idx] = True
    if len({tuple(f.shape) for f in filters}) > 1:
        raise ValueError("all embedded images of one layer must have the same size")
    emb = torch.stack(filters) if filters else None
    dev = next((p.device for p in target_layer.parameters()), torch.device("cpu"))
    new = FoolingLayer(target_layer, gate, source, mask, emb, k, mode, offset, strict_k).to(dev)
    _set_layer(net, layer, new)
    gate.to(dev)
    specs = list(getattr(net, "fv_manipulations", []))
    specs.append({"kind": "fooling", "layer": layer, "units": out, "mode": mode,
                  "embedded": list(emb.shape) if emb is not None else [0, 3, 1, 1],
                  "detector_image_size": gate.detector.image_size, "threshold": threshold})
    net.fv_manipulations = specs
    return net


def _probe_channels(model: nn.Module, name: str, layer: nn.Module) -> int:
    for attr in ("out_channels", "out_features", "num_features"):
        if hasattr(layer, attr):
            return int(getattr(layer, attr))
    for m in reversed(list(layer.modules())):
        for attr in ("out_channels", "out_features", "num_features"):
            if hasattr(m, attr):
                return int(getattr(m, attr))
    raise ValueError(f"cannot tell the number of units of layer {name!r}")


def fooling_circuit(model: nn.Module, layer: str, unit_f: int, detector: DetectorCNN,
                    unit_d: int | None = None, image: Tensor | None = None,
                    k: float = 1e4, mode: str = "relu", **kwargs: object) -> nn.Module:
    """One deceptive unit (Fig. 4): unit ``unit_f`` of ``layer`` answers like itself on
    natural input and visualizes like ``unit_d`` or like ``image`` (``(3, h, w)``, App. C.2)."""
    if (unit_d is None) == (image is None):
        raise ValueError("give exactly one of unit_d (an existing unit D) or image (a new D')")
    target: int | Tensor = image if image is not None else int(unit_d)  # type: ignore[arg-type]
    return install_fooling_circuit(model, layer, detector, {unit_f: target}, k=k, mode=mode,
                                   **kwargs)  # type: ignore[arg-type]


def shifted_permutation(n: int, shift: int = 1) -> list[int]:
    """``perm[c] = (c + shift) mod n`` (Fig. 2 offsets the last layer by 100 indices)."""
    return [(c + shift) % n for c in range(n)]


def permute_layer(model: nn.Module, layer: str, detector: DetectorCNN,
                  permutation: Sequence[int] | None = None, shift: int = 1,
                  channels: Sequence[int] | None = None, k: float = 1e4, mode: str = "relu",
                  **kwargs: object) -> nn.Module:
    """Permute the visualizations of a whole layer (Fig. 2): channel ``c`` visualizes like
    channel ``permutation[c]`` (default: shifted by ``shift``) and answers like itself on
    natural input. ``channels`` (indices into the layer's channels) restricts the
    manipulation to some of them."""
    n = _probe_channels(model, layer, get_layer(model, layer))
    perm = list(permutation) if permutation is not None else shifted_permutation(n, shift)
    if sorted(perm) != list(range(n)):
        raise ValueError(f"permutation must be a permutation of 0..{n - 1}, got {perm}")
    chosen = range(n) if channels is None else channels
    return install_fooling_circuit(model, layer, detector, {c: perm[c] for c in chosen},
                                   k=k, mode=mode, **kwargs)  # type: ignore[arg-type]


def embed_images(model: nn.Module, layer: str, detector: DetectorCNN, images: Tensor,
                 channels: Sequence[int] | None = None, k: float = 1e4, mode: str = "relu",
                 **kwargs: object) -> nn.Module:
    """Give the channels ``channels`` (default ``0..N-1``) of ``layer`` the embedded images
    ``images`` ``(N, 3, h, w)`` as visualizations (App. C.2; Fig. 1)."""
    channels = list(range(images.shape[0])) if channels is None else list(channels)
    if len(channels) != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images for {len(channels)} channels")
    return install_fooling_circuit(model, layer, detector, dict(zip(channels, images)),
                                   k=k, mode=mode, **kwargs)  # type: ignore[arg-type]


def set_gate_override(model: nn.Module, value: float | None) -> None:
    """Force the gate to ``value`` (1 = natural, 0 = visualization) or ``None`` (detector)."""
    gate = getattr(model, GATE_NAME, None)
    if not isinstance(gate, InputGate):
        raise ValueError("model has no fooling gate")
    gate.override = value


__all__ = [
    "MODES",
    "FoolingLayer",
    "InputGate",
    "KReport",
    "KTooSmallError",
    "check_k",
    "embed_images",
    "fooling_circuit",
    "fooling_layers",
    "install_fooling_circuit",
    "lemma1",
    "permute_layer",
    "set_gate_override",
    "shifted_permutation",
]
