"""Feature accentuation: increase a unit *in a natural image*, batched over units.

Hamblin et al. 2024, "Feature Accentuation: Revealing 'What' Features Respond to in
Natural Images" (§3): start from a seed image ``x₀`` and maximize the unit while a
regularizer keeps the representation at a chosen layer ``l`` close to the seed's::

    x* = argmax_x  f_u(T(x)) − λ · D_l(x),    D_l(x) = mean( (a_l(T(x)) − a_l(T(x₀)))² )

where ``T`` is the step's random transformation, applied to the image *and* to the seed
(the authors' ``faccent`` passes the seed through the model with the same transforms at
every step), and the mean runs over the layer's channels and positions. The image is the
engine's parameterization (Fourier + decorrelated + sigmoid by default) started exactly at
the seed, optimized by :func:`lightning_fv.optvis.render.render` (the one render loop)
with an objective built by the objective algebra.

Where we differ from ``faccent`` (its ``render_vis`` with ``accent_reg_layer``): it uses the
(non-squared) per-position L2 distance averaged over positions and sets
``λ = α · |∇f|₁ / |∇D|₁`` from the gradients of the first step; we use the squared distance
(smooth at the seed, where the first gradient of a norm is undefined) averaged over
elements, with a fixed ``λ`` (``weight``). ``faccent`` averages 16 transformed copies per
step; we use one (the engine's standard transforms), so a step costs two forward passes
(image and seed) instead of 32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_fv.optvis.hooks import (
    Activations,
    Unit,
    capture,
    parse_units,
    preserved_state,
    record,
)
from lightning_fv.optvis.objectives import INPUT, OUTPUT, Objective, units_objective
from lightning_fv.optvis.param import ImageParam
from lightning_fv.optvis.render import RenderResult, render
from lightning_fv.optvis.transform import (
    TransformLike,
    fit_to_input,
    resolve_input_size,
    standard_transforms,
)
from lightning_fv.utils.device import model_device, model_dtype
from lightning_fv.utils.preprocess import NormalizeLike, as_normalize

#: ``faccent``'s defaults where the engine has the same knob: Adam lr 0.05, ~100 steps.
DEFAULT_STEPS = 100
DEFAULT_LR = 0.05
#: ``λ``: not from the paper (``faccent`` balances the gradients instead); chosen on the
#: bundled photo CNN (``docs/maco.md``), where at ``block2`` it cuts the drift of ``λ = 0``
#: by 10–35 % (30 steps, 3 units: D = 0.44 / 0.066 / 0.86 vs 0.67 / 0.096 / 0.96) while the
#: unit still rises by 2–30. Retune per model and layer.
DEFAULT_WEIGHT = 10.0


class _PairWithSeed:
    """Transform ``(B, 3, H, W) → (B, 6, H, W)``: the seed images stacked as extra channels,
    so the following affine transforms move image and seed identically."""

    def __init__(self, seeds: Tensor) -> None:
        self.seeds = seeds

    def __call__(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.seeds.to(x.device, x.dtype)], 1)


def _split_pair(x: Tensor) -> Tensor:
    """``(B, 2C, h, w) → (2B, C, h, w)``: rows ``0…B−1`` the images, ``B…2B−1`` the seeds."""
    c = x.shape[1] // 2
    return torch.cat([x[:, :c], x[:, c:]], 0)


def _keeping_layouts(values: dict[str, Tensor], recorded: dict[str, Tensor]) -> Activations:
    """``values`` as :class:`Activations` with the layouts ``capture`` recorded in
    ``recorded``, so that a unit of a token layer still leaves out the prefix tokens (a
    plain dict would fall back to guessing the layout from the rank alone)."""
    out = Activations(values)
    out.layouts = dict(getattr(recorded, "layouts", {}))
    return out


def image_rows(objective: Objective) -> Objective:
    """``objective`` evaluated on the image rows only: when a forward saw ``2B`` rows
    (images then seeds, see :func:`seed_distance`), every activation is cut to its first
    ``B`` rows (``B`` = the rows of :data:`INPUT`); the recorded layouts are kept."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        b = a[INPUT].shape[0]
        view = {k: (v[:b] if k != INPUT and v.shape[0] == 2 * b else v) for k, v in a.items()}
        return objective(_keeping_layouts(view, a))

    return Objective(fn, objective.layers, objective.name)


def seed_distance(layer: str, reference: Tensor) -> Objective:
    """``D_l = mean((a_l(x) − a_l(x₀))²)`` per sample ``(B,)`` over the layer's elements.

    In a forward of ``2B`` rows (images then their transformed seeds) the seed rows are the
    reference; in a forward of ``B`` rows (the untransformed images) ``reference``
    ``(B, …)``, the seeds' recorded activations, is."""

    def fn(a: dict[str, Tensor]) -> Tensor:
        act = a[layer]
        b = a[INPUT].shape[0]
        if act.shape[0] == 2 * b:
            x, ref = act[:b], act[b:].detach()
        else:
            x, ref = act, reference.to(act.device, act.dtype)
            if ref.shape != x.shape:
                raise ValueError(f"layer {layer!r}: seed activations {tuple(ref.shape)} do not "
                                 f"match the image's {tuple(x.shape)}")
        return (x.float() - ref.float()).pow(2).flatten(1).mean(1)

    return Objective(fn, [layer], f"seed_distance({layer})")


@dataclass
class AccentuationResult:
    """Accentuated images ``(B, 3, H, W)`` in [0, 1] (CPU), the unit's value ``f_u`` and the
    regularizer ``D_l`` of the final, untransformed images ``(B,)``, the seeds as the
    parameterization reproduces them ``(B, 3, H, W)``, and the full render result
    (``render.values`` hold ``f_u − λ·D_l`` at each threshold)."""

    images: Tensor
    values: Tensor
    distances: Tensor
    seeds: Tensor
    units: list[str] = field(default_factory=list)
    render: RenderResult | None = None

    @property
    def final(self) -> Tensor:
        return self.images


def _resize(images: Tensor, size: int | tuple[int, int] | None) -> Tensor:
    if size is None:
        return images
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(images.shape[-2:]) == hw:
        return images
    return F.interpolate(images, size=hw, mode="bilinear", antialias=True,
                         align_corners=False).clamp(0, 1)


@torch.no_grad()
def accentuation_terms(model: nn.Module, units: str | Sequence[str | Unit], images: Tensor,
                       seeds: Tensor, layer: str | None, normalize: NormalizeLike = None,
                       input_size: int | tuple[int, int] | str | None = "auto"
                       ) -> tuple[Tensor, Tensor]:
    """``(f_u(x), D_l(x, x₀))`` of untransformed ``images`` against ``seeds`` (both
    ``(B, 3, H, W)`` in [0, 1]), each ``(B,)`` on the CPU; ``D`` is 0 without a layer.
    Both are resized to the model's input size first (``input_size`` as in
    :func:`~lightning_fv.optvis.render.render`: ``"auto"`` reads the size a ViT enforces)."""
    parsed = parse_units(units, model)
    device = model_device(model)
    fixed = resolve_input_size(model, input_size)
    norm = as_normalize(normalize, device)
    obj = units_objective(parsed)
    layers = list(obj.model_layers) + ([layer] if layer else [])
    with preserved_state(model), capture(model, layers) as acts:
        def run(x: Tensor) -> dict[str, Tensor]:
            x = fit_to_input(x.to(device, torch.float32), fixed)
            out = model((norm(x) if norm is not None else x).to(model_dtype(model)))
            got = _keeping_layouts({k: acts[k] for k in layers}, acts)
            got[OUTPUT], got[INPUT] = out, x
            return got

        a0 = {layer: run(seeds)[layer]} if layer else {}
        a = run(images)
        values = obj(a).float().cpu()
        dist = torch.zeros_like(values) if not layer else \
            (a[layer].float() - a0[layer].float()).pow(2).flatten(1).mean(1).cpu()
    return values, dist


def accentuate(
    model: nn.Module,
    units: str | Sequence[str | Unit],
    seed_images: Tensor,
    *,
    layer: str | None,
    weight: float = DEFAULT_WEIGHT,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    param: dict | None = None,
    transforms: Sequence[TransformLike] | str | None = "standard",
    image_size: int | tuple[int, int] | None = None,
    normalize: NormalizeLike = None,
    seed: int | Sequence[int] = 0,
    progress: bool | object = False,
    preset: str = "lucent",
    **render_kwargs: object,
) -> AccentuationResult:
    """Accentuate ``units[i]`` in ``seed_images[i]``, all samples as one batch.

    Args:
        model: any ``nn.Module`` (state restored, hooks removed, as in :func:`render`).
        units: the unit grammar; one unit per seed image (a single unit with several
            images accentuates it in each).
        seed_images: ``(B, 3, H, W)`` natural images in [0, 1] (resized to ``image_size``
            when given).
        layer: the regularized layer ``l`` (``None``: no regularizer, plain activation
            maximization started from the seeds).
        weight: ``λ`` (objective units per unit of mean squared activation difference).
        steps: optimizer steps (``faccent``: about 100).
        lr: Adam learning rate (``faccent``: 0.05).
        param: keyword arguments of :class:`ImageParam` (default Fourier + decorrelated +
            sigmoid), started exactly at the seeds.
        transforms: ``"standard"``, ``"none"``/``None`` or a list; applied to image and
            seed alike.
        normalize: ``(mean, std)`` or a module before the model (``None``: it normalizes).
        seed: per-sample generator seed(s) of the transforms.
        progress: as in :func:`render`.
        preset: render preset; ``"lucent"`` (default) does not redirect ReLU gradients,
            which a start from a natural image does not need.
        **render_kwargs: further :func:`render` options (``autocast_dtype``, ``record``…).
            ``input_size`` (default ``"auto"``) also applies to the seed's reference
            activations and the returned ``values``/``distances``: a model with a fixed
            input size (a ViT) sees image and seed resized to it, whatever ``image_size``.

    Returns:
        :class:`AccentuationResult`.
    """
    parsed = parse_units(units, model)
    seeds = _resize(seed_images.detach().float(), image_size).clamp(0, 1)
    if seeds.dim() != 4 or seeds.shape[1] != 3:
        raise ValueError(f"seed_images must be (B, 3, H, W), got {tuple(seed_images.shape)}")
    if len(parsed) == 1 and seeds.shape[0] > 1:
        parsed = parsed * seeds.shape[0]
    if len(parsed) != seeds.shape[0]:
        raise ValueError(f"{seeds.shape[0]} seed image(s) for {len(parsed)} unit(s); give one "
                         "unit per image or a single unit")
    if weight < 0:
        raise ValueError(f"weight (λ) must be >= 0, got {weight}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = model_device(model)
    fixed = resolve_input_size(model, render_kwargs.get("input_size", "auto"))
    kwargs = dict(param or {})
    # the seed as the parameterization reproduces it (sigmoid clipping), so D = 0 at step 0
    x0 = ImageParam.from_images(seeds.to(device), **kwargs)().detach()
    objective = image_rows(units_objective(parsed))
    if layer is not None:
        norm = as_normalize(normalize, device)
        ref = record(model, [layer], fit_to_input(x0, fixed), preprocess=norm,
                     batch_size=max(1, len(x0)))[layer]
        objective = objective - weight * seed_distance(layer, ref)
    if isinstance(transforms, str) and transforms not in ("standard", "none"):
        raise ValueError(f"unknown transforms {transforms!r}; valid: 'standard', 'none', "
                         "None or a list of transforms")
    base = standard_transforms() if transforms == "standard" else \
        [] if transforms in (None, "none") else list(transforms)  # type: ignore[arg-type]
    chain = [_PairWithSeed(x0), *base, _split_pair] if layer is not None else base
    res = render(model, objective, param=kwargs, transforms=chain or None,
                 optimizer=lambda p: torch.optim.Adam(p, lr=lr), thresholds=(steps,),
                 init_images=x0, normalize=normalize, seed=seed, progress=progress,
                 unit_names=[str(u) for u in parsed], preset=preset,
                 **render_kwargs)  # type: ignore[arg-type]
    values, dist = accentuation_terms(model, parsed, res.final, x0.cpu(), layer, normalize,
                                      input_size=fixed)
    return AccentuationResult(res.final, values, dist, x0.float().cpu(),
                              [str(u) for u in parsed], res)
