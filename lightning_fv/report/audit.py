"""``audit``: run every check of the library on one model and one data set.

Each section is computed independently by :func:`audit`; an exception inside a section is
recorded as its error text (``status="error"``) and the other sections still run. A
section that has nothing to do (no detector checkpoint, no ``pgd_eps``) is ``"skipped"``
with the reason. Every number a section shows lives in its flat ``numbers`` dict (the JSON
and the HTML read the same values); ``settings`` holds what is needed to rerun it.

Sections and their sources (`dont-trust-your-eyes…` unless named):

- ``model``: name, input size, where the input normalization comes from, the examined
  layers with their output shapes (:func:`lightning_fv.optvis.list_layers`).
- ``visualizations``: sampled units per layer rendered with
  :func:`lightning_fv.optvis.render_units` (App. C.2), objective value per unit.
- ``sanity``: the similarity sanity check (§3, App. C.3; App. E with an OOD set).
- ``detector``: the natural-vs-visualization classifier (App. C.1) on the renders.
- ``path_linearity``: AGA / ALD (§5, App. C.4) from highly activating natural images.
- ``robustness``: clean and PGD accuracy (`robust-representations…` §3, App. A.3).

Sharding: with ``distributed`` (a Lightning ``Fabric`` or ``Trainer`` whose processes all
call :func:`audit`), the renders (sampled units, the sanity check's class units) are split
into fixed chunks of ``batch_size`` units dealt round-robin to the processes, the sanity
check's layers and the path-linearity units are split likewise, and every result is
gathered in order on every process (:func:`lightning_fv.utils.distributed.map_chunks`).
The chunks do not depend on the number of processes, so one device and N devices give
the same images and numbers. The natural images are rank zero's; the small sections
(model, detector, robustness) run on every process; the caller writes the report on rank
zero.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import lightning_fv
from lightning_fv.adversarial import PGDConfig, robust_accuracy
from lightning_fv.analysis import (
    DEFAULT_STRIDES,
    METRICS,
    path_linearity,
    sanity_check_groups,
    summarize_groups,
    top_activating,
)
from lightning_fv.analysis.similarity import SanityCheckResult
from lightning_fv.optvis import list_layers, parse_unit, render_units
from lightning_fv.optvis.hooks import layer_channels
from lightning_fv.optvis.layout import Layout
from lightning_fv.optvis.render import PRESETS
from lightning_fv.utils import make_generator, model_device
from lightning_fv.utils.distributed import broadcast_object, map_chunks, owned_items, world
from lightning_fv.utils.preprocess import Normalize, normalized_input

#: Section names in report order.
SECTIONS = ("model", "visualizations", "sanity", "detector", "path_linearity", "robustness")

TITLES = {
    "model": "Model summary",
    "visualizations": "Feature visualizations",
    "sanity": "Similarity sanity check",
    "detector": "Visualization detector",
    "path_linearity": "Path linearity",
    "robustness": "Robustness",
}

#: The engine's rendering presets (:data:`lightning_fv.optvis.render.PRESETS`), as
#: keyword arguments of ``render``.
RENDER_PRESETS: dict[str, dict[str, Any]] = {
    name: {"transforms": "standard", **kw} for name, kw in PRESETS.items()
}


class SectionSkipped(Exception):
    """Raised inside a section that has nothing to do; the message says why."""


@dataclass
class Section:
    """One report section.

    Attributes:
        name: one of :data:`SECTIONS`.
        title: heading.
        status: ``"ok"``, ``"error"`` or ``"skipped"``.
        seconds: wall time of the section.
        settings: everything needed to rerun it (JSON-able).
        numbers: flat ``key → float`` of every number the section shows.
        data: JSON-able tables for the templates (rows of dicts, verdicts, notes).
        images: ``name → PNG bytes`` (figures and tiles), embedded in the HTML.
        error: error text (``status == "error"``) or the reason for skipping.
        traceback: formatted traceback of the error.
    """

    name: str
    title: str
    status: str = "ok"
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)
    numbers: dict[str, float] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)
    error: str | None = None
    traceback: str | None = None

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict (images listed by name only; NaN becomes ``None``)."""
        return {"title": self.title, "status": self.status, "seconds": round(self.seconds, 3),
                "error": self.error, "settings": _jsonable(self.settings),
                "numbers": {k: _finite_or_none(v) for k, v in self.numbers.items()},
                "data": _jsonable(self.data), "images": sorted(self.images)}


@dataclass
class AuditResult:
    """All sections of an audit plus the run's metadata (library version, data size…)."""

    sections: dict[str, Section]
    settings: dict[str, Any]
    meta: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"meta": _jsonable(self.meta), "settings": _jsonable(self.settings),
                "sections": {k: s.to_json() for k, s in self.sections.items()}}

    @property
    def failed(self) -> list[str]:
        """Names of the sections that raised."""
        return [k for k, s in self.sections.items() if s.status == "error"]


def _finite_or_none(v: float) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float):
        return _finite_or_none(obj)
    if isinstance(obj, (int, str, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    return repr(obj)


# --------------------------------------------------------------------------- data


def collect_images(data: Any, max_images: int) -> tuple[Tensor, Tensor]:
    """The first ``max_images`` ``(images (N, 3, H, W) [0, 1], labels (N,))`` of ``data``:
    a LightningDataModule (its validation loader, after ``setup``), a DataLoader or other
    iterable of ``(x, y)`` batches, or an ``(images, labels)`` tensor pair."""
    if max_images < 1:
        raise ValueError(f"max_images must be >= 1, got {max_images}")
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        x, y = data
        return x[:max_images].detach().float().cpu(), y[:max_images].detach().long().cpu()
    if hasattr(data, "val_dataloader") and callable(data.val_dataloader):
        if hasattr(data, "setup"):
            data.setup("validate")
        data = data.val_dataloader()
    if not hasattr(data, "__iter__"):
        raise TypeError(f"cannot read images from {type(data).__name__}; pass a "
                        "LightningDataModule, a DataLoader of (images, labels) batches or "
                        "an (images, labels) tensor pair")
    xs, ys, n = [], [], 0
    for batch in data:
        if isinstance(batch, dict):
            x, y = batch.get("image", batch.get("x")), batch.get("label", batch.get("y"))
        else:
            x, y = batch[0], batch[1] if len(batch) > 1 else None
        if not isinstance(x, Tensor) or not isinstance(y, Tensor):
            raise TypeError("batches must be (images, labels) tensors or dicts with "
                            "'image'/'label' keys")
        take = min(x.shape[0], max_images - n)
        xs.append(x[:take].detach().float().cpu())
        ys.append(y[:take].detach().long().cpu())
        n += take
        if n >= max_images:
            break
    if not xs:
        raise ValueError("the data yielded no images")
    return torch.cat(xs), torch.cat(ys)


def _normalization_source(model: nn.Module, normalize: tuple[Sequence[float], Sequence[float]]
                          | None) -> dict[str, Any]:
    if normalize is not None:
        return {"mean": [float(v) for v in normalize[0]], "std": [float(v) for v in normalize[1]],
                "source": "given by the caller (mean/std arguments), applied before the model"}
    for name, m in model.named_modules():
        if isinstance(m, Normalize):
            return {"mean": m.mean.flatten().tolist(), "std": m.std.flatten().tolist(),
                    "source": f"inside the model (module {name!r}, {type(m).__name__})"}
    return {"mean": None, "std": None,
            "source": "none stated: the model receives [0, 1] RGB as is (pass mean/std if it "
                      "expects normalized input)"}


# --------------------------------------------------------------------------- the audit


def audit(
    model: nn.Module,
    data: Any,
    *,
    layers: Sequence[str],
    units_per_layer: int = 4,
    units: Sequence[str] | None = None,
    steps: int = 64,
    preset: str = "lucid",
    seed: int = 0,
    model_name: str | None = None,
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
    max_images: int = 200,
    class_layer: str = "fc",
    class_names: Sequence[str] | None = None,
    visualizations_per_class: int = 1,
    sanity_layers: Sequence[str] | None = None,
    metric: str = "spearman",
    strides: Sequence[int] = DEFAULT_STRIDES,
    ood_data: Any = None,
    detector_ckpt: str | Path | None = None,
    detector_examples: int = 6,
    path_units_per_layer: int = 1,
    path_images: int = 4,
    path_steps: int = 32,
    pgd_eps: float | None = None,
    pgd_norm: str = "l2",
    pgd_steps: int = 10,
    pgd_restarts: int = 1,
    robust_images: int = 100,
    sections: Sequence[str] = SECTIONS,
    progress: bool = False,
    batch_size: int = 64,
    distributed: Any = None,
) -> AuditResult:
    """Audit the feature visualizations of ``model`` on ``data``, section by section.

    Args:
        model: a classifier taking ``(B, 3, H, W)`` RGB in [0, 1] (or normalized by
            ``normalize``); it is left in the state it was in (mode, flags, grads).
        data: a LightningDataModule (validation split), a DataLoader of ``(x, y)`` or an
            ``(images, labels)`` pair; the first ``max_images`` images are used.
        layers: layers whose units are rendered and measured (e.g. ``["block1", "fc"]``).
        units_per_layer: units sampled per layer (channels drawn without replacement with
            ``seed``), unless ``units`` names them.
        units: explicit units (``"layer:index"``) instead of sampling.
        steps: optimizer steps per rendering (visualizations and sanity check).
        preset: a :data:`RENDER_PRESETS` name.
        seed: seed of unit sampling, renders (unit ``i`` uses ``seed``), PGD.
        model_name: shown in the report (default: the class name).
        normalize: ``(mean, std)`` applied to the input for models that do not normalize
            themselves; ``None`` = as the model is.
        max_images: natural images read from ``data``.
        class_layer: layer whose unit ``c`` is class ``c`` (sanity check, App. C.3).
        class_names: names of the classes (default: from ``data.classes`` if any).
        visualizations_per_class: class visualizations per class (seeds ``seed + k``).
        sanity_layers: layers compared by the sanity check (default ``layers``).
        metric: ``"spearman"``, ``"pearson"`` or ``"cosine"``.
        strides: every n-th (same-class, other-class, natural-vs-FV) pair (C.3).
        ood_data: a second natural data set for App. E's OOD bounds (same forms as ``data``).
        detector_ckpt: a detector saved by ``lightning-fv train-detector`` (safetensors) or
            a Lightning checkpoint of ``VisualizationDetector``; ``None`` skips the section.
        detector_examples: most "unnatural" renders shown.
        path_units_per_layer: units per layer for path linearity (the first sampled ones).
        path_images: ``M`` highly activating natural start images per unit (C.4: 20).
        path_steps: ``N`` optimizer steps of each path (C.4: 512).
        pgd_eps: PGD radius in [0, 1] pixel units; ``None`` skips the robustness section.
        pgd_norm: ``"l2"`` or ``"linf"``.
        pgd_steps, pgd_restarts: PGD steps (step size ``2.5·ε/steps``) and restarts.
        robust_images: images attacked (the first ones of ``data``).
        sections: which of :data:`SECTIONS` to run (others are marked skipped).
        progress: progress bars while rendering (rank zero).
        batch_size: units rendered together (one chunk of the sharded renders).
        distributed: a Lightning ``Fabric`` or ``Trainer`` (anything with ``global_rank``
            and ``world_size`` over an initialized process group) to shard the work across
            its processes; every process must call :func:`audit` with the same arguments.
            ``None``: this process does everything.

    Returns:
        :class:`AuditResult`; write it with :func:`lightning_fv.report.write_report`.
    """
    _validate(layers=layers, units_per_layer=units_per_layer, steps=steps, preset=preset,
              metric=metric, strides=strides, path_steps=path_steps, path_images=path_images,
              pgd_norm=pgd_norm, sections=sections)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t_start = time.perf_counter()
    natural, labels = collect_images(data, max_images)
    rank, world_size = world(distributed)
    if world_size > 1:  # every process audits rank zero's images (loaders may be sharded)
        natural, labels = broadcast_object(distributed, (natural, labels))
    if class_names is None:
        names = getattr(data, "classes", None)
        class_names = list(names) if names else None
    image_size = tuple(int(s) for s in natural.shape[-2:])
    render_kwargs = dict(RENDER_PRESETS[preset])
    ctx = _Context(model=model, natural=natural, labels=labels, image_size=image_size,
                   render_kwargs=render_kwargs, progress=progress and rank == 0,
                   batch_size=batch_size, dist=distributed)
    settings = {
        "layers": list(layers), "units_per_layer": units_per_layer,
        "units": list(units) if units else None, "steps": steps, "preset": preset,
        "preset_render_kwargs": render_kwargs, "seed": seed, "max_images": max_images,
        "class_layer": class_layer, "visualizations_per_class": visualizations_per_class,
        "sanity_layers": list(sanity_layers or layers), "metric": metric,
        "strides": list(strides), "ood": ood_data is not None,
        "detector_ckpt": None if detector_ckpt is None else str(detector_ckpt),
        "detector_examples": detector_examples, "path_units_per_layer": path_units_per_layer,
        "path_images": path_images, "path_steps": path_steps, "pgd_eps": pgd_eps,
        "pgd_norm": pgd_norm, "pgd_steps": pgd_steps, "pgd_restarts": pgd_restarts,
        "robust_images": robust_images, "normalize": None if normalize is None
        else [list(map(float, normalize[0])), list(map(float, normalize[1]))],
    }
    data_info = {"n_images": int(natural.shape[0]), "image_size": list(image_size),
                 "n_classes_present": int(labels.unique().numel()),
                 "source": type(data).__name__, "class_names": class_names}
    meta = {
        "library": "lightning_fv", "version": lightning_fv.__version__,
        "torch": torch.__version__, "python": platform.python_version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model_name": model_name or type(model).__name__,
        "device": str(model_device(model)), "data": data_info,
        "world_size": world_size, "batch_size": batch_size,
    }
    plan: dict[str, Callable[[Section], None]] = {
        "model": lambda s: _model_section(s, ctx, layers, class_layer, normalize),
        "visualizations": lambda s: _visualization_section(
            s, ctx, layers, units, units_per_layer, steps, seed),
        "sanity": lambda s: _sanity_section(
            s, ctx, list(sanity_layers or layers), class_layer, class_names,
            visualizations_per_class, steps, seed, metric, strides, ood_data, max_images),
        "detector": lambda s: _detector_section(s, ctx, detector_ckpt, detector_examples),
        "path_linearity": lambda s: _path_section(
            s, ctx, path_units_per_layer, path_images, path_steps, seed),
        "robustness": lambda s: _robust_section(
            s, ctx, pgd_eps, pgd_norm, pgd_steps, pgd_restarts, robust_images, seed),
    }
    out: dict[str, Section] = {}
    with normalized_input(model, normalize):
        for name in SECTIONS:
            sec = Section(name, TITLES[name])
            sec.settings["data_size"] = int(natural.shape[0])
            if name not in sections:
                sec.status, sec.error = "skipped", "not requested (sections argument)"
            else:
                _run(sec, plan[name])
            ctx.sections[name] = sec
            out[name] = sec
    meta["seconds"] = round(time.perf_counter() - t_start, 3)
    return AuditResult(sections=out, settings=settings, meta=meta)


def _validate(**kw: Any) -> None:
    if not kw["layers"]:
        raise ValueError("audit needs at least one layer, e.g. layers=['block2', 'fc']")
    for key in ("units_per_layer", "steps", "path_images"):
        if int(kw[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {kw[key]}")
    if kw["path_steps"] < 2:
        raise ValueError(f"path_steps must be >= 2 (angles need two gradients), got "
                         f"{kw['path_steps']}")
    if kw["preset"] not in RENDER_PRESETS:
        raise ValueError(f"unknown preset {kw['preset']!r}; valid: {sorted(RENDER_PRESETS)}")
    if kw["metric"] not in METRICS:
        raise ValueError(f"unknown metric {kw['metric']!r}; valid: {list(METRICS)}")
    if len(kw["strides"]) != 3 or min(int(s) for s in kw["strides"]) < 1:
        raise ValueError(f"strides must be 3 positive integers (same class, other class, "
                         f"natural vs FV), got {list(kw['strides'])}")
    if kw["pgd_norm"] not in ("l2", "linf"):
        raise ValueError(f"unknown pgd_norm {kw['pgd_norm']!r}; valid: 'l2', 'linf'")
    bad = [s for s in kw["sections"] if s not in SECTIONS]
    if bad:
        raise ValueError(f"unknown section(s) {bad}; valid: {list(SECTIONS)}")


@dataclass
class _Context:
    model: nn.Module
    natural: Tensor
    labels: Tensor
    image_size: tuple[int, int]
    render_kwargs: dict[str, Any]
    progress: bool
    batch_size: int = 64
    dist: Any = None
    sections: dict[str, Section] = field(default_factory=dict)
    renders: dict[str, Any] = field(default_factory=dict)


def _run(sec: Section, fn: Callable[[Section], None]) -> None:
    t0 = time.perf_counter()
    try:
        fn(sec)
        sec.status = "ok"
    except SectionSkipped as why:
        sec.status, sec.error = "skipped", str(why)
    except Exception as err:  # a failing section must not stop the others
        sec.status = "error"
        sec.error = f"{type(err).__name__}: {err}"
        sec.traceback = traceback.format_exc(limit=8)
        sec.images.clear()
    sec.seconds = time.perf_counter() - t0


def _fmt_shape(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _layout(layout: Layout) -> str:
    """How the report names a layer's layout (:mod:`lightning_fv.optvis.layout`)."""
    names = {"conv": "feature map (C, H, W)", "vector": "vector (C,)",
             "channels_last": "channels-last map (H, W, C)"}
    return names.get(layout.kind, f"{layout} (N, C)")


# --------------------------------------------------------------------------- sharding


def _render(ctx: _Context, names: Sequence[str], seeds: Sequence[int], steps: int
            ) -> tuple[Tensor, Tensor, list[list[str]]]:
    """Render unit ``names[i]`` with seed ``seeds[i]`` for ``steps`` steps, in fixed chunks of
    ``ctx.batch_size`` sharded over the processes: final images ``(n, 3, H, W)`` and objective
    values ``(n,)`` on the CPU in unit order (every process), and each process's units."""
    jobs = list(zip(names, seeds))
    mine = len(owned_items(jobs, ctx.batch_size, ctx.dist))
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=mine * steps, desc=f"render {mine} units x {steps} steps",
                   unit="unit-step", unit_scale=True)

    def render_chunk(chunk: list[tuple[str, int]]) -> list[tuple[Tensor, Tensor]]:
        last = [0]

        def report(done: int, total: int) -> None:
            if bar is not None:
                bar.update(done - last[0])
            last[0] = done

        res = render_units(ctx.model, [u for u, _ in chunk], batch_size=None,
                           seed=[s for _, s in chunk], thresholds=(steps,),
                           image_size=ctx.image_size, progress=report, **ctx.render_kwargs)
        return list(zip(res.final.detach().cpu(), res.values[steps].detach().cpu()))

    try:
        out, shards = map_chunks(render_chunk, jobs, ctx.dist, ctx.batch_size)
    finally:
        if bar is not None:
            bar.close()
    return (torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out]),
            [[u for u, _ in s] for s in shards])


def _sanity_result(ctx: _Context, layers: list[str], vis: Tensor, vis_labels: Tensor,
                   metric: str, strides: Sequence[int], ood_x: Tensor | None = None,
                   ood_y: Tensor | None = None) -> tuple[SanityCheckResult, list[list[str]]]:
    """The similarity sanity check (§3, C.3; App. E with ``ood_x``) with its layers sharded
    over the processes (``ceil(L / world)`` layers each); the same result as
    :func:`~lightning_fv.analysis.similarity_sanity_check` with its default settings."""
    if not layers:
        raise ValueError("the sanity check needs at least one layer (sanity_layers)")
    _, size = world(ctx.dist)

    def layer_groups(chunk: list[str]) -> list[tuple[dict[str, Tensor], int]]:
        groups, keep = sanity_check_groups(ctx.model, chunk, ctx.natural, ctx.labels, vis,
                                           vis_labels, metric, tuple(strides),
                                           ood_natural=ood_x, ood_labels=ood_y)
        return [(groups[name], int(keep.sum())) for name in chunk]

    out, shards = map_chunks(layer_groups, layers, ctx.dist, math.ceil(len(layers) / size))
    result = summarize_groups(layers, [g for g, _ in out], metric, ood=ood_x is not None)
    result.n_natural = out[0][1]
    result.n_excluded = int(ctx.natural.shape[0]) - result.n_natural
    result.n_visualizations = int(vis.shape[0])
    return result, shards


# --------------------------------------------------------------------------- sections


def _model_section(sec: Section, ctx: _Context, layers: Sequence[str], class_layer: str,
                   normalize: tuple[Sequence[float], Sequence[float]] | None) -> None:
    model = ctx.model
    info = list_layers(model, (int(ctx.natural.shape[1]), *ctx.image_size), with_layout=True)
    shapes = {n: (t, s, lay) for n, t, s, lay in info}
    wanted = list(dict.fromkeys([*layers, class_layer]))
    missing = [n for n in wanted if n not in shapes]
    if missing:
        from lightning_fv.optvis import get_layer

        for n in missing:
            get_layer(model, n)  # raises with the closest names
    rows = []
    for n in wanted:
        t, s, lay = shapes[n]
        rows.append({"layer": n, "type": t, "shape": _fmt_shape(s), "layout": _layout(lay),
                     "units": layer_channels(s, lay), "examined": n in layers})
    with torch.no_grad():
        out = model(ctx.natural[:1].to(model_device(model)))
    n_params = sum(p.numel() for p in model.parameters())
    sec.numbers.update({"parameters": float(n_params), "output_size": float(out.shape[-1]),
                        "layers_total": float(len(info))})
    sec.data.update({
        "input_size": _fmt_shape((int(ctx.natural.shape[1]), *ctx.image_size)),
        "normalization": _normalization_source(model, normalize), "layers": rows,
        "class_layer": class_layer, "dtype": str(next(model.parameters()).dtype)
        if n_params else "none",
    })
    sec.settings.update({"input_size": [int(ctx.natural.shape[1]), *ctx.image_size]})


def _sample_units(model: nn.Module, layers: Sequence[str], k: int, seed: int,
                  image_size: tuple[int, int], channels: int) -> list[str]:
    shapes = {n: layer_channels(s, lay) for n, _, s, lay in
              list_layers(model, (channels, *image_size), with_layout=True)}
    g = make_generator(seed)
    out = []
    for layer in layers:
        if layer not in shapes:
            from lightning_fv.optvis import get_layer

            get_layer(model, layer)
            raise ValueError(f"layer {layer!r} has no tensor output")
        c = shapes[layer]  # feature channels in the layer's layout
        pick = torch.randperm(c, generator=g)[:min(k, c)].sort().values
        out += [f"{layer}:{int(i)}" for i in pick]
    return out


def _visualization_section(sec: Section, ctx: _Context, layers: Sequence[str],
                           units: Sequence[str] | None, k: int, steps: int, seed: int) -> None:
    from lightning_fv.report.figures import image_png

    names = ([str(parse_unit(u)) for u in units] if units else
             _sample_units(ctx.model, layers, k, seed, ctx.image_size, ctx.natural.shape[1]))
    images, values, shards = _render(ctx, names, [seed] * len(names), steps)
    sec.data["shards"] = shards
    ctx.renders["units"] = names
    ctx.renders["images"] = images
    grids: dict[str, list[dict[str, Any]]] = {}
    for i, u in enumerate(names):
        layer = parse_unit(u).layer
        sec.numbers[f"value/{u}"] = float(values[i])
        sec.images[f"tile/{u}"] = image_png(images[i], scale=_tile_scale(ctx.image_size))
        grids.setdefault(layer, []).append({"unit": u, "image": f"tile/{u}",
                                            "key": f"value/{u}"})
    sec.data["grids"] = grids
    sec.data["objective"] = "mean activation of the channel (spatial mean), or the neuron"
    sec.settings.update({"units": names, "steps": steps, "seed": seed,
                         "image_size": list(ctx.image_size),
                         "preset": _preset_name(ctx.render_kwargs)})


def _preset_name(kwargs: dict[str, Any]) -> str:
    for name, kw in RENDER_PRESETS.items():
        if kw == kwargs:
            return name
    return "custom"


def _tile_scale(image_size: tuple[int, int]) -> int:
    return max(1, 128 // max(image_size))


def _sanity_section(sec: Section, ctx: _Context, layers: list[str], class_layer: str,
                    class_names: Sequence[str] | None, per_class: int, steps: int, seed: int,
                    metric: str, strides: Sequence[int], ood_data: Any, max_images: int
                    ) -> None:
    from lightning_fv.analysis.figures import sanity_check_figure
    from lightning_fv.report.figures import figure_png

    with torch.no_grad():
        n_classes = int(ctx.model(ctx.natural[:1].to(model_device(ctx.model))).shape[-1])
    present = sorted(int(c) for c in ctx.labels.unique())
    if any(c >= n_classes for c in present):
        raise ValueError(f"labels {present} exceed the model's {n_classes} outputs; the "
                         "sanity check needs a classifier whose output c is class c")
    jobs = [(c, k) for c in present for k in range(per_class)]
    vis, _, render_shards = _render(ctx, [f"{class_layer}:{c}" for c, _ in jobs],
                                    [seed + k for _, k in jobs], steps)
    vis_labels = torch.tensor([c for c, _ in jobs])
    result, layer_shards = _sanity_result(ctx, layers, vis, vis_labels, metric, strides)
    sec.data["shards"] = {"renders": render_shards, "layers": layer_shards}
    checks = [("", result)]
    if ood_data is not None:
        ox, oy = collect_images(ood_data, max_images)
        if world(ctx.dist)[1] > 1:
            ox, oy = broadcast_object(ctx.dist, (ox, oy))
        ood, _ = _sanity_result(ctx, layers, vis, vis_labels, metric, strides, ox, oy)
        checks.append(("ood/", ood))
        sec.settings["ood_images"] = int(ox.shape[0])
    tables = {}
    for prefix, r in checks:
        rows = []
        for i, layer in enumerate(r.layers):
            for g in ("upper", "lower", "fv"):
                sec.numbers[f"{prefix}{g}/{layer}"] = float(getattr(r, g)[i])
            sec.numbers[f"{prefix}normalized/{layer}"] = float(r.normalized[i])
            sec.numbers[f"{prefix}smoothed/{layer}"] = float(r.smoothed[i])
            included = bool(r.included[i])
            verdict = ("excluded (bounds closer than 0.01)" if not included else
                       "pass" if float(r.normalized[i]) >= 0.5 else "fail")
            rows.append({"layer": layer, "verdict": verdict, "prefix": prefix})
        sec.numbers[f"{prefix}score"] = float(r.score)
        tables[prefix or "main"] = {"rows": rows, "passes": r.passes, "ood": r.ood,
                                    "n_natural": r.n_natural, "n_excluded": r.n_excluded,
                                    "n_visualizations": r.n_visualizations}
        title = "sanity check" + (" with OOD bounds (App. E)" if r.ood else "")
        sec.images[f"{prefix}figure"] = figure_png(sanity_check_figure(r, title=title))
    sec.numbers["n_natural_used"] = float(result.n_natural)
    sec.numbers["n_natural_excluded"] = float(result.n_excluded)
    sec.data.update({"tables": tables, "overall": "pass" if result.passes else "fail",
                     "class_names": list(class_names) if class_names else None})
    sec.settings.update({"layers": layers, "class_units": [f"{class_layer}:{c}" for c in present],
                         "visualizations_per_class": per_class, "steps": steps,
                         "seeds": sorted({seed + k for _, k in jobs}), "metric": metric,
                         "strides": list(strides), "min_gap": 0.01, "window": 7,
                         "std_window": 5, "preset": _preset_name(ctx.render_kwargs),
                         "exclude_misclassified": True})


def _detector_section(sec: Section, ctx: _Context, ckpt: str | Path | None, n_examples: int
                      ) -> None:
    from lightning_fv.modules.detector import load_detector
    from lightning_fv.report.figures import detector_figure, figure_png, image_png

    if ckpt is None:
        raise SectionSkipped("no detector checkpoint given (detector_ckpt); train one with "
                             "`lightning-fv train-detector`")
    if "images" not in ctx.renders:
        vis = ctx.sections.get("visualizations")
        why = vis.error if vis is not None else "not run"
        raise RuntimeError(f"the detector needs the feature visualizations section, which "
                           f"did not produce images ({why})")
    net = load_detector(ckpt).to(model_device(ctx.model))
    size = int(net.image_size)

    def p_natural(x: Tensor) -> Tensor:
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=True)
        with torch.no_grad():
            logits = torch.cat([net(x[s:s + 256].to(model_device(ctx.model))).float().cpu()
                                for s in range(0, x.shape[0], 256)])
        return torch.sigmoid(logits)

    names, images = ctx.renders["units"], ctx.renders["images"]
    p = p_natural(images)
    p_nat = p_natural(ctx.natural)
    layers = list(dict.fromkeys(parse_unit(u).layer for u in names))
    fractions = []
    for layer in layers:
        idx = [i for i, u in enumerate(names) if parse_unit(u).layer == layer]
        frac = float((p[idx] > 0.5).float().mean())
        fractions.append(frac)
        sec.numbers[f"fraction_natural/{layer}"] = frac
    for i, u in enumerate(names):
        sec.numbers[f"p_natural/{u}"] = float(p[i])
    sec.numbers["fraction_natural/all"] = float((p > 0.5).float().mean())
    sec.numbers["natural_images_called_natural"] = float((p_nat > 0.5).float().mean())
    worst = torch.argsort(p, stable=True)[:n_examples].tolist()
    sec.data["examples"] = [{"unit": names[i], "image": f"tile/{names[i]}",
                             "key": f"p_natural/{names[i]}"} for i in worst]
    for i in worst:
        sec.images[f"tile/{names[i]}"] = image_png(images[i], scale=_tile_scale(ctx.image_size))
    sec.data["layers"] = [{"layer": lay, "key": f"fraction_natural/{lay}"} for lay in layers]
    sec.images["figure"] = figure_png(detector_figure(
        layers, fractions, sec.numbers["natural_images_called_natural"]))
    sec.settings.update({"checkpoint": str(ckpt), "detector_image_size": size,
                         "threshold": 0.5, "resized": size != max(ctx.image_size),
                         "renders": len(names)})


def _path_section(sec: Section, ctx: _Context, per_layer: int, m: int, steps: int,
                  seed: int) -> None:
    from lightning_fv.analysis.figures import agpa_figure
    from lightning_fv.report.figures import figure_png, path_linearity_figure

    if "units" in ctx.renders:
        names = ctx.renders["units"]
    else:
        vis = ctx.sections.get("visualizations")
        raise RuntimeError("path linearity measures the sampled units of the feature "
                           "visualizations section, which failed "
                           f"({vis.error if vis is not None else 'not run'})")
    chosen: list[str] = []
    for layer in dict.fromkeys(parse_unit(u).layer for u in names):
        chosen += [u for u in names if parse_unit(u).layer == layer][:per_layer]

    def paths(chunk: list[str]) -> list[dict[str, Any]]:
        out = []
        for u in chunk:
            start, _, _ = top_activating(ctx.model, u, ctx.natural, m=m)
            r = path_linearity(ctx.model, u, start, steps=steps, seed=seed,
                               **ctx.render_kwargs)
            out.append({"aga": r.aga, "ald": r.ald, "agpa": r.agpa,
                        "start": float(r.start_values.mean()),
                        "end": float(r.end_values.mean())})
        return out

    results, shards = map_chunks(paths, chosen, ctx.dist, 1)
    sec.data["shards"] = shards
    rows, curves = [], {}
    for u, r in zip(chosen, results):
        sec.numbers[f"aga/{u}"] = r["aga"]
        sec.numbers[f"ald/{u}"] = r["ald"]
        sec.numbers[f"start_value/{u}"] = r["start"]
        sec.numbers[f"end_value/{u}"] = r["end"]
        curves[u] = r["agpa"]
        rows.append({"unit": u, "layer": parse_unit(u).layer})
    per_layer_rows = []
    for layer in dict.fromkeys(r["layer"] for r in rows):
        us = [r["unit"] for r in rows if r["layer"] == layer]
        sec.numbers[f"aga_layer/{layer}"] = sum(sec.numbers[f"aga/{u}"] for u in us) / len(us)
        sec.numbers[f"ald_layer/{layer}"] = sum(sec.numbers[f"ald/{u}"] for u in us) / len(us)
        per_layer_rows.append({"layer": layer, "n_units": len(us)})
    sec.data.update({"units": rows, "layers": per_layer_rows})
    sec.images["bars"] = figure_png(path_linearity_figure(
        [r["unit"] for r in rows], [sec.numbers[f"aga/{r['unit']}"] for r in rows],
        [sec.numbers[f"ald/{r['unit']}"] for r in rows], [r["layer"] for r in rows]))
    sec.images["agpa"] = figure_png(agpa_figure(curves))
    sec.settings.update({"units": chosen, "start_images_per_unit": m, "steps": steps,
                         "seed": seed, "preset": _preset_name(ctx.render_kwargs),
                         "start_images": "top activating natural images of the audit data"})


def _robust_section(sec: Section, ctx: _Context, eps: float | None, norm: str, steps: int,
                    restarts: int, n: int, seed: int) -> None:
    if eps is None:
        raise SectionSkipped("no PGD radius given (pgd_eps); e.g. pgd_eps=0.5 for ℓ2 at 64 px")
    cfg = PGDConfig(norm, eps=float(eps), steps=int(steps), restarts=int(restarts))
    x, y = ctx.natural[:n], ctx.labels[:n]
    dev = model_device(ctx.model)
    with torch.no_grad():
        k = int(ctx.model(x[:1].to(dev)).shape[-1])
    if int(y.max()) >= k:
        raise ValueError(f"labels up to {int(y.max())} but the model has {k} outputs; the "
                         "robustness section needs a classifier")
    clean, robust = robust_accuracy(ctx.model, x.to(dev), y.to(dev), cfg,
                                    generator=make_generator(seed, device=dev))
    sec.numbers.update({"clean_accuracy": clean, "robust_accuracy": robust,
                        "eps": float(cfg.eps), "step_size": float(cfg.step_size)})
    sec.settings.update({"norm": norm, "eps": float(cfg.eps), "steps": cfg.steps,
                         "step_size": float(cfg.step_size), "restarts": cfg.restarts,
                         "random_start": cfg.random_start, "images": int(x.shape[0]),
                         "seed": seed, "units": "[0, 1] pixel units"})


__all__ = ["RENDER_PRESETS", "SECTIONS", "AuditResult", "Section", "SectionSkipped", "audit",
           "collect_images"]
