"""Rendering (Lucent's ``render``): activation maximization, batched over units.

:func:`render` optimizes a batch of parameterized images for an :class:`Objective` and
returns the images at the requested ``thresholds`` (numbers of optimizer steps), and
optionally the trajectory (image, gradient w.r.t. the image, objective value) at chosen
steps. :func:`render_units` renders a list of units, sample ``i`` maximizing unit ``i``,
in chunks.

Defaults follow `dont-trust-your-eyes…` App. C.2 (Lucent 0.1.8: Fourier + decorrelated
+ sigmoid image, ``standard_transforms``, Adam with lr 0.05, ``thresholds=(512,)``) with
one named difference: the default preset ``"lucid"`` redirects ReLU gradients for the
first 16 steps; ``preset="lucent"`` is the paper's renderer exactly (see :data:`PRESETS`).
Every sample has its own ``torch.Generator`` (``seed[i]``) for its initial noise and
for its random transforms, so a unit's image does not depend on what else is in the batch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from lightning_fv.optvis.hooks import Unit, capture, parse_units, preserved_state
from lightning_fv.optvis.objectives import INPUT, OUTPUT, Objective, as_objective, units_objective
from lightning_fv.optvis.param import ImageParam
from lightning_fv.optvis.relu import redirect_relus
from lightning_fv.optvis.transform import (
    TransformChain,
    TransformLike,
    fit_to_input,
    resolve_input_size,
    standard_transforms,
)
from lightning_fv.utils.device import model_device, model_dtype
from lightning_fv.utils.preprocess import NormalizeLike, as_normalize
from lightning_fv.utils.rng import make_generator

OptimizerFactory = Callable[[list[Tensor]], torch.optim.Optimizer]


def default_optimizer(params: list[Tensor]) -> torch.optim.Optimizer:
    """Adam with learning rate 0.05 (Lucent's default)."""
    return torch.optim.Adam(params, lr=0.05)


def log_spaced_steps(total: int, n: int = 15) -> list[int]:
    """``n`` distinct steps in ``[0, total)`` spaced logarithmically (always including 0
    and ``total − 1``), as `dont-trust-your-eyes…` App. C.1 samples 15 steps per
    trajectory. Fewer are returned when ``total < n``."""
    if total < 1 or n < 1:
        raise ValueError(f"need total >= 1 and n >= 1, got total={total}, n={n}")
    if n >= total:
        return list(range(total))
    steps = {0, total - 1}
    k = n
    while len(steps) < n:
        raw = torch.logspace(0, math.log10(total), k).round().long() - 1
        steps = set(raw.clamp(0, total - 1).tolist()) | {0, total - 1}
        k += 1
    return sorted(steps)[:n] if len(steps) == n else sorted(steps)


@dataclass
class Trajectory:
    """Recorded optimization path of a batch, on the CPU.

    ``steps[t]`` is the number of optimizer updates already applied to ``images[t]``;
    ``grads[t]`` is the gradient of the (transformed) objective w.r.t. that image and
    ``values[t]`` the objective value, both from the same forward pass.
    """

    steps: Tensor  # (T,) int64
    images: Tensor  # (T, B, C, H, W)
    values: Tensor  # (T, B)
    grads: Tensor | None = None  # (T, B, C, H, W)


@dataclass
class RenderResult:
    """Images at each threshold ``(B, C, H, W)`` (CPU, float32) and the untransformed
    objective value of those images ``(B,)``; ``units`` names the samples."""

    images: dict[int, Tensor]
    values: dict[int, Tensor]
    trajectory: Trajectory | None = None
    units: list[str] = field(default_factory=list)

    @property
    def final(self) -> Tensor:
        """Images at the largest threshold."""
        return self.images[max(self.images)]


@contextmanager
def _channels_last(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Convert 4-D parameters/buffers to channels_last; put the original tensors back."""
    if not enabled:
        yield
        return
    saved = [(t, t.data) for t in list(model.parameters()) + list(model.buffers())]
    try:
        model.to(memory_format=torch.channels_last)
        yield
    finally:
        for t, data in saved:
            t.data = data


#: Rendering presets named by their source. ``"lucent"`` is what torch-lucent 0.1.8's
#: ``render_vis`` does, the renderer of `dont-trust-your-eyes…` (App. C.2): no gradient
#: redirection. ``"lucid"`` adds Lucid's redirected-ReLU warm-up for the first 16 steps
#: (units closed on the starting noise would otherwise never move). Both use Fourier +
#: decorrelated + sigmoid images, ``standard_transforms`` and Adam (lr 0.05). One
#: difference from Lucent remains in both: our ``random_scale`` resamples inside the
#: canvas (fixed size) where Lucent's upsamples and grows it by up to 10 %.
PRESETS: dict[str, dict[str, int]] = {
    "lucent": {"redirect_relu_steps": 0},
    "lucid": {"redirect_relu_steps": 16},
}
DEFAULT_PRESET = "lucid"


def preset_settings(preset: str) -> dict[str, int]:
    """The settings of a named rendering preset (see :data:`PRESETS`)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {sorted(PRESETS)}")
    return dict(PRESETS[preset])


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    return model_device(model), model_dtype(model)


ProgressFn = Callable[[int, int], None]


def render(
    model: nn.Module,
    objective: Objective | str | Unit,
    param: ImageParam | dict | None = None,
    transforms: Sequence[TransformLike] | str | None = "standard",
    optimizer: OptimizerFactory | None = None,
    thresholds: Sequence[int] = (512,),
    *,
    batch: int = 1,
    image_size: int | tuple[int, int] = 224,
    init_images: Tensor | None = None,
    normalize: NormalizeLike = None,
    seed: int | Sequence[int] = 0,
    record: Sequence[int] | str | None = None,
    record_grads: bool = True,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile: bool = False,
    progress: bool | ProgressFn = False,
    unit_names: Sequence[str] | None = None,
    redirect_relu_steps: int | None = None,
    preset: str = DEFAULT_PRESET,
    input_size: int | tuple[int, int] | str | None = "auto",
    layouts: Mapping[str, object] | None = None,
) -> RenderResult:
    """Maximize ``objective`` over a batch of parameterized images.

    Args:
        model: any ``nn.Module`` taking ``(B, 3, H, W)`` input. Its training mode,
            ``requires_grad`` flags and gradients are restored afterwards, hooks removed.
        objective: an :class:`Objective` returning ``(B,)`` values, or a unit name.
        param: an :class:`ImageParam`, or keyword arguments for one (``fft``,
            ``decorrelate``, ``output``, ``decay_power``, ``color_matrix``, ``sd``).
        transforms: ``"standard"`` (Lucent's), a list of transforms, or ``None`` /
            ``"none"`` for no transforms.
        optimizer: factory ``params → Optimizer`` (default Adam, lr 0.05). Element-wise
            optimizers (Adam, SGD) keep samples independent.
        thresholds: optimizer-step counts at which to return images (0 = the start).
        batch: number of images (ignored when ``param`` or ``init_images`` is given).
        image_size: ``H`` or ``(H, W)`` of the parameterized image.
        init_images: start from these ``(B, C, H, W)`` images instead of noise.
        normalize: ``(mean, std)`` or a module applied after the transforms; ``None`` when
            the model normalizes its input itself. Never guessed.
        seed: one seed for all samples or one per sample (initial noise and transforms).
        record: trajectory steps to keep: ``"all"``, ``"log"`` (15 log-spaced steps, App.
            C.1), or a list of step indices in ``[0, max(thresholds))``.
        record_grads: also keep the gradient w.r.t. the image at recorded steps.
        autocast_dtype: e.g. ``torch.bfloat16`` to run the model under autocast.
        channels_last: run with channels_last weights and input (restored afterwards).
        compile: ``torch.compile`` the model for this call.
        progress: ``True`` shows a progress bar over steps; a callable is called as
            ``progress(step, total)`` after every optimizer step (for a caller's own bar).
        unit_names: names of the samples, used in error messages and the result.
        redirect_relu_steps: during the first this many steps, ``nn.ReLU`` modules pass
            the gradient of a sample whose ordinary ReLU gradient is all zero as if they
            were the identity, in the direction that opens them (Lucid's redirected ReLU,
            :mod:`lightning_fv.optvis.relu`); units that are closed on the starting noise
            would otherwise never move. ``0`` turns it off; ``None`` takes the preset's.
        preset: ``"lucid"`` (default: redirected ReLUs for 16 steps) or ``"lucent"``
            (exactly the paper's renderer, no redirection); see :data:`PRESETS`.
        input_size: ``(H, W)`` (or ``H``) the model must receive: the transformed image
            (and the untransformed one at thresholds) is resized to it, bilinearly, after
            the transforms (Lucent's ``fixed_image_size``; the standard transforms grow a
            224 image to 236). ``"auto"`` (default) reads it from the model when the model
            states one (:func:`~lightning_fv.optvis.transform.model_input_size`: timm's
            ``pretrained_cfg`` with ``fixed_input_size``, ``patch_embed.img_size``);
            ``None`` never resizes.
        layouts: activation layouts stated for layers, ``{"blocks.5": "tokens"}`` (see
            :mod:`lightning_fv.optvis.layout`); others are detected.

    Returns:
        :class:`RenderResult`.

    Raises:
        FloatingPointError: a non-finite objective or gradient, naming the unit and step.
        ValueError: the model rejects the image size it gets, before the first optimizer
            step, naming the rendered and the transformed sizes.
    """
    obj = as_objective(objective)
    thresholds = sorted({int(t) for t in thresholds})
    if not thresholds or thresholds[0] < 0:
        raise ValueError(f"thresholds must be non-negative step counts, got {thresholds}")
    total = thresholds[-1]
    if redirect_relu_steps is None:
        redirect_relu_steps = preset_settings(preset)["redirect_relu_steps"]
    if redirect_relu_steps < 0:
        raise ValueError(f"redirect_relu_steps must be >= 0, got {redirect_relu_steps}")
    device, dtype = _model_device_dtype(model)
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    fixed = resolve_input_size(model, input_size)

    if isinstance(param, ImageParam):
        b = param.shape[0]
        if init_images is not None:
            param.set_images(init_images)
    else:
        b = init_images.shape[0] if init_images is not None else batch
    seed_list = [int(seed)] * b if isinstance(seed, int) else [int(s) for s in seed]
    if len(seed_list) != b:
        raise ValueError(f"got {len(seed_list)} seeds for a batch of {b}")
    generators = [make_generator(s) for s in seed_list]
    if not isinstance(param, ImageParam):
        kwargs = dict(param or {})
        if init_images is not None:
            param = ImageParam.from_images(init_images.to(device), **kwargs)
        else:
            param = ImageParam(b, 3, h, w, generators=generators, device=device, **kwargs)
    param = param.to(device)
    names = list(unit_names) if unit_names is not None else [f"{obj.name}[{i}]" for i in range(b)]

    if isinstance(transforms, str) and transforms not in ("standard", "none"):
        raise ValueError(f"unknown transforms {transforms!r}; valid: 'standard', 'none', "
                         "None or a list of transforms")
    chain = TransformChain(standard_transforms() if transforms == "standard" else
                           None if transforms == "none" else transforms)
    sizes = _size_note(tuple(param.shape[-2:]), chain, fixed)
    draws = chain.draw(generators, max(total, 1)).to(device)
    rec_steps = _record_steps(record, total)
    norm = as_normalize(normalize, device)
    opt = (optimizer or default_optimizer)([param.raw])

    rec_imgs, rec_grads, rec_vals = [], [], []
    images: dict[int, Tensor] = {}
    values: dict[int, Tensor] = {}
    first_bad = torch.full((b,), -1, device=device, dtype=torch.long)

    with preserved_state(model), _channels_last(model, channels_last), \
            capture(model, obj.model_layers, layouts=layouts) as acts:
        fwd = torch.compile(model) if compile else model
        accepted: list[bool] = []  # non-empty once the model took an input

        def forward(img: Tensor, u: Tensor | None) -> Tensor:
            x = fit_to_input(chain(img, u) if u is not None else img, fixed)
            if norm is not None:
                x = norm(x)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                                enabled=autocast_dtype is not None):
                out = fwd(x.to(dtype)) if accepted else _first_call(fwd, x.to(dtype), sizes)
            accepted.append(True)
            acts[OUTPUT] = out
            acts[INPUT] = img
            return obj(acts).float()

        def snapshot(step: int) -> None:
            with torch.no_grad():
                img = param()
                images[step] = img.detach().float().cpu().clone()
                values[step] = forward(img, None).detach().cpu()

        if 0 in thresholds:
            snapshot(0)
        steps_iter = range(1, total + 1)
        report = progress if callable(progress) else None
        if progress is True:
            from tqdm.auto import tqdm

            steps_iter = tqdm(steps_iter, desc=f"render {b} images", leave=False)
        for step in steps_iter:
            opt.zero_grad(set_to_none=True)
            img = param()
            keep = (step - 1) in rec_steps
            if keep and record_grads:
                img.retain_grad()
            with redirect_relus(model, enabled=step <= redirect_relu_steps):
                vals = forward(img, draws[step - 1])
            (-vals.sum()).backward()
            finite = torch.isfinite(vals) & torch.isfinite(param.raw.grad).flatten(1).all(1)
            first_bad = torch.where((first_bad < 0) & ~finite, step, first_bad)
            if step == total:  # samples whose objective no longer moves the image at all
                stuck = (param.raw.grad.flatten(1) == 0).all(1).nonzero().flatten().tolist()
            if keep:
                rec_imgs.append(img.detach().float().cpu().clone())
                rec_vals.append(vals.detach().cpu())
                if record_grads:
                    rec_grads.append(-img.grad.detach().float().cpu())  # d objective / d image
            opt.step()
            if report is not None:
                report(step, total)
            if step in thresholds or step == total:
                _raise_if_bad(first_bad, names)
                snapshot(step)
        _raise_if_bad(first_bad, names)
        if total and stuck:
            warnings.warn(
                f"{len(stuck)} unit(s) had an exactly zero gradient at the last step, so their "
                f"images stopped moving (closed ReLUs everywhere): "
                f"{[names[i] for i in stuck[:8]]}; raise redirect_relu_steps (now "
                f"{redirect_relu_steps}) or start from images", RuntimeWarning, stacklevel=2)
        for step, img in images.items():
            if not torch.isfinite(img).all():
                bad = (~torch.isfinite(img)).flatten(1).any(1).nonzero().flatten().tolist()
                raise FloatingPointError(
                    f"non-finite image for unit(s) {[names[i] for i in bad]} at step {step}")

    traj = None
    if rec_steps:
        traj = Trajectory(
            steps=torch.tensor(sorted(rec_steps)),
            images=torch.stack(rec_imgs),
            values=torch.stack(rec_vals),
            grads=torch.stack(rec_grads) if record_grads else None,
        )
    return RenderResult(images={t: images[t] for t in thresholds},
                        values={t: values[t] for t in thresholds}, trajectory=traj, units=names)


def _size_note(size: tuple[int, int], chain: TransformChain,
               fixed: tuple[int, int] | None) -> str:
    """The image sizes of a render, for an error when the model rejects its input."""
    out = chain.out_size(size)
    made = "an unknown size" if out is None else f"{out[0]}x{out[1]}"
    note = f"the {size[0]}x{size[1]} rendered images become {made} after the transforms"
    if fixed is not None:
        return note + f", resized to the input size {fixed[0]}x{fixed[1]}"
    return note + (" and are not resized; pass input_size=(H, W), the size the model "
                   "takes (or use transforms that keep it)")


def _first_call(model: Callable[[Tensor], Tensor], x: Tensor, sizes: str) -> Tensor:
    """``model(x)`` for the first input of a render (before any optimizer step); a model
    that rejects it raises naming the sizes."""
    try:
        return model(x)
    except (AssertionError, RuntimeError, ValueError) as err:
        raise ValueError(f"the model rejected its {x.shape[-2]}x{x.shape[-1]} input before "
                         f"the first step: {sizes} ({type(err).__name__}: {err})") from err


def _record_steps(record: Sequence[int] | str | None, total: int) -> set[int]:
    if record is None:
        return set()
    if record == "all":
        return set(range(total))
    if record == "log":
        return set(log_spaced_steps(total, 15))
    if isinstance(record, str):
        raise ValueError(f"unknown record {record!r}; valid: 'all', 'log', or a list of steps")
    steps = {int(s) for s in record}
    bad = [s for s in steps if not 0 <= s < total]
    if bad:
        raise ValueError(f"record steps {sorted(bad)} outside [0, {total})")
    return steps


def _raise_if_bad(first_bad: Tensor, names: Sequence[str]) -> None:
    bad = (first_bad >= 0).nonzero().flatten()
    if bad.numel():
        i = int(bad[0])
        raise FloatingPointError(
            f"non-finite objective or gradient for unit {names[i]!r} at step "
            f"{int(first_bad[i])} ({bad.numel()} unit(s) affected: "
            f"{[names[int(j)] for j in bad[:5]]})"
        )


def render_units(
    model: nn.Module,
    units: str | Sequence[str | Unit],
    batch_size: int | None = 64,
    seed: int | Sequence[int] = 0,
    progress: bool | ProgressFn = False,
    max_memory_gb: float | None = None,
    **kwargs: object,
) -> RenderResult:
    """Render one image per unit, sample ``i`` maximizing ``units[i]``, in batches.

    Args:
        model: the model (see :func:`render`).
        units: the unit grammar of :func:`~lightning_fv.optvis.hooks.parse_units`
            (``"block3:5"``, ``"block3:0-15"``, ``"fc:*"``, :class:`Unit` s), any layers.
        batch_size: units rendered together, one image each (``None``: all at once). On
            CUDA, ``max_memory_gb`` instead sizes the batches from a probe of the per-image
            memory cost.
        seed: seed for every unit (a unit's image is then the same as when rendered
            alone with that seed), or one seed per unit.
        progress: ``True`` shows one bar over units × optimizer steps (with an ETA); a
            callable is called as ``progress(done, total)`` in unit-steps.
        **kwargs: passed to :func:`render` (``thresholds``, ``image_size``, ``record``…).

    Returns:
        A :class:`RenderResult` whose tensors concatenate the batches in unit order.
    """
    probe = resolve_input_size(model, kwargs.get("input_size", "auto")  # type: ignore[arg-type]
                               ) or kwargs.get("image_size")
    parsed = parse_units(units, model, probe, kwargs.get("layouts"))  # type: ignore[arg-type]
    seeds = [int(seed)] * len(parsed) if isinstance(seed, int) else [int(s) for s in seed]
    if len(seeds) != len(parsed):
        raise ValueError(f"got {len(seeds)} seeds for {len(parsed)} units")
    if max_memory_gb is not None:
        batch_size = _probe_batch_size(model, parsed[0], max_memory_gb, kwargs)
    steps = max(int(t) for t in kwargs.get("thresholds", (512,)))  # type: ignore[union-attr]
    results = [render(model, units_objective(part), batch=len(part), seed=part_seeds,
                      progress=report, unit_names=[str(u) for u in part], **kwargs)
               for part, part_seeds, report in chunked_sweep(
                   parsed, seeds, batch_size, steps, progress, "render")]
    return _concat(results)


def chunked_sweep(
    units: Sequence[Unit], seeds: Sequence[int], batch_size: int | None, steps: int,
    progress: bool | ProgressFn, desc: str,
) -> Iterator[tuple[list[Unit], list[int], ProgressFn]]:
    """The chunks of a sweep of ``units`` (``batch_size`` at a time, ``None``: all) with
    their seeds and a per-step progress callback ``(step, steps)`` reporting in
    unit-steps: one bar over all chunks (``progress=True``), the caller's
    ``progress(done, total)``, or nothing. The bar is closed at the end, also on error."""
    size = batch_size or len(units)
    per = max(steps, 1)
    total = len(units) * per
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"{desc} {len(units)} units x {steps} steps",
                   unit="unit-step", unit_scale=True)
    try:
        for start in range(0, len(units), size):
            part = list(units[start:start + size])
            n, offset = len(part), start * per
            if bar is not None:
                report: ProgressFn = lambda _s, _t, n=n: bar.update(n)  # noqa: E731
            elif callable(progress):
                report = lambda s, _t, n=n, o=offset: progress(o + s * n, total)  # noqa: E731
            else:
                report = lambda _s, _t: None  # noqa: E731
            yield part, list(seeds[start:start + size]), report
    finally:
        if bar is not None:
            bar.close()


def _concat(results: list[RenderResult]) -> RenderResult:
    first = results[0]
    images = {t: torch.cat([r.images[t] for r in results]) for t in first.images}
    values = {t: torch.cat([r.values[t] for r in results]) for t in first.values}
    traj = None
    if first.trajectory is not None:
        trs = [r.trajectory for r in results]
        traj = Trajectory(
            steps=first.trajectory.steps,
            images=torch.cat([t.images for t in trs], dim=1),
            values=torch.cat([t.values for t in trs], dim=1),
            grads=None if first.trajectory.grads is None
            else torch.cat([t.grads for t in trs], dim=1),
        )
    return RenderResult(images, values, traj, [n for r in results for n in r.units])


def _probe_batch_size(model: nn.Module, u: Unit, max_memory_gb: float,
                      kwargs: dict[str, object]) -> int:
    """Units per chunk that fit ``max_memory_gb`` on CUDA, from two one-step probes."""
    device, _ = _model_device_dtype(model)
    if device.type != "cuda":
        return 64
    probe = {k: v for k, v in kwargs.items() if k not in ("thresholds", "record", "progress")}
    peaks = []
    for n in (1, 2):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        render(model, units_objective([u] * n), batch=n, thresholds=(1,), **probe)
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
    per_image = max(peaks[1] - peaks[0], 1)
    fixed = max(peaks[0] - per_image, 0)
    return max(1, int((max_memory_gb * 2**30 - fixed) // per_image))
