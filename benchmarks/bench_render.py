"""Batched unit sweep (lightning_fv) vs its floor and vs torch-lucent 0.1.8 ``render_vis``.

Same model (ResNet-50, random weights, eval mode), same layer (``layer4``), 224 px,
512 steps, Lucent's standard transforms, Adam lr 0.05, ImageNet normalization.
lightning_fv renders each of ``--units`` sizes (channels ``0…N−1``) as one batch, or in
chunks of ``--batch-size``, in fp32 and (CUDA) bf16 autocast + channels_last.

- **Floor** (issue 3): the time of the same forward+backward passes of the model at the
  same batch sizes in a plain loop: for every chunk of the sweep, ``steps`` iterations of
  forward on a random ``(B, 3, H, W)`` input with ``requires_grad`` (eval mode, frozen
  parameters), the sweep's objective (sample ``i``'s channel mean of the hooked layer),
  backward to the input. Same dtype / autocast / channels_last as the sweep it is
  compared with. Our render does **not** stop the forward at the target layer (it runs the
  whole model and reads the layer through a forward hook), so neither does the floor.
  ``H × W`` is the size the model receives: the standard transforms grow a 224 image to
  236 (pad 12, jitters 8 and 4) and a torchvision ResNet states no fixed input size, so
  nothing resizes it back. The floor times ``--floor-steps`` passes per chunk (after 3
  warm-up passes) and scales them to ``steps`` (``--floor-steps 0``: all of them); the
  loop is steady, the scaling keeps the GPU run short. Goal: sweep / floor ≤ 1.2.
- **Shares**: the image parameterization (Fourier + decorrelation + sigmoid, ``param``)
  and the transforms (``standard_transforms`` as one ``grid_sample``, then
  normalization and the channels_last copy) timed alone, forward + backward (from a fixed
  random gradient), on the same batch, scaled to the same steps; likewise one Adam step
  on the raw tensor. Reported as fractions of the sweep's time; ``other`` is what remains
  of the sweep after the floor and these three (ReLU redirection for the first 16
  steps, the non-finite checks, the final snapshot, Python overhead). Timed alone, the
  parts cannot hide their kernel launches behind the model's work, so on a GPU the shares
  are upper bounds.
- **Lucent**: renders ``--lucent-units`` units (default 2, as in the recorded H100 run)
  one at a time; its time per unit × N is the time of a sweep of N units, for every size
  (rendering 64 would take 13 min on an H100, 512 almost two hours). The objective
  reached (channel mean of the final image, no transforms) is
  reported for both on the units both rendered.

The render runs with the package's default preset ``"lucid"`` (Lucid's redirected ReLUs
for the first 16 steps, which Lucent does not do) unless ``--preset lucent``; the
redirection is part of the sweep's ``other`` share.

Rows are printed as JSON lines as they finish; at the end a markdown table and one JSON
line with everything (``--json PATH`` writes that line to a file too).

    python benchmarks/bench_render.py --units 64 512            # GPU, ~6 min on an H200 (est.)
    python benchmarks/bench_render.py --units 64 512 --no-lucent  # floor ratios only
    python benchmarks/bench_render.py --units 64                # the issue's Lucent figure
    python benchmarks/bench_render.py --device cpu --small      # reduced CPU version

``--small`` is ResNet-18, 4 and 8 units, 32 steps, 128 px, 1 Lucent unit, the floor
timed on 8 passes (~1 min on one busy core); any of these given explicitly wins
(``--small --units 8 --steps 16 --size 224 --lucent-units 2 --floor-steps 0`` is the
earlier reduced run plus its floor). ``--configs fp32`` or ``--configs
bf16+channels_last`` runs one configuration (CUDA default: both; CPU: fp32).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import Tensor, nn

from lightning_fv.models import IMAGENET_MEAN, IMAGENET_STD, Normalize
from lightning_fv.optvis.hooks import capture, get_layer
from lightning_fv.optvis.param import ImageParam
from lightning_fv.optvis.render import DEFAULT_PRESET, PRESETS, default_optimizer, render_units
from lightning_fv.optvis.transform import (
    TransformChain,
    fit_to_input,
    resolve_input_size,
    standard_transforms,
)
from lightning_fv.utils.device import synchronize
from lightning_fv.utils.rng import make_generator

CONFIGS: dict[str, dict[str, object]] = {
    "fp32": {},
    "bf16+channels_last": {"autocast_dtype": torch.bfloat16, "channels_last": True},
}


def _import_lucent() -> tuple[types.ModuleType, types.ModuleType]:
    import kornia
    import kornia.geometry.transform as kgt

    # torch-lucent 0.1.8 imports these from their pre-0.5 location
    kornia.get_rotation_matrix2d = kgt.get_rotation_matrix2d
    kornia.warp_affine = kgt.warp_affine
    if "IPython" not in sys.modules:  # lucent imports IPython.display for notebooks only
        ip = types.ModuleType("IPython")
        ip.display = types.ModuleType("IPython.display")
        sys.modules["IPython"] = ip
        sys.modules["IPython.display"] = ip.display
    from lucent.optvis import param, render

    return render, param


@torch.no_grad()
def channel_values(model: nn.Module, layer: str, channels: list[int], images: Tensor,
                   norm: nn.Module) -> Tensor:
    """Mean activation of ``channels[i]`` for ``images[i]`` (no transforms)."""
    with capture(model, [layer]) as acts:
        model(norm(images))
    a = acts[layer]
    return a[torch.arange(len(channels)), torch.as_tensor(channels)].mean((-1, -2)).float().cpu()


def chunks(n: int, batch_size: int | None) -> list[tuple[int, int]]:
    """``(first unit, batch)`` of each chunk, as ``render_units`` splits ``n`` units."""
    size = batch_size or n
    return [(s, min(size, n - s)) for s in range(0, n, size)]


def per_pass(fn: Callable[[], object], timed: int, device: torch.device, warmup: int = 3
             ) -> float:
    """Seconds per call of ``fn`` over ``timed`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(timed):
        fn()
    synchronize(device)
    return (time.perf_counter() - t0) / timed


def floor_seconds(model: nn.Module, layer: str, n: int, batch_size: int | None, steps: int,
                  timed: int, in_hw: tuple[int, int], device: torch.device,
                  autocast_dtype: torch.dtype | None = None, channels_last: bool = False
                  ) -> float:
    """The floor of a sweep of channels ``0…n−1``: per chunk, ``steps`` forward+backward
    passes to a random input (timed on ``timed`` of them, scaled)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    m = copy.deepcopy(model).eval().to(memory_format=fmt)
    for p in m.parameters():
        p.requires_grad_(False)
    out: list[Tensor] = []
    handle = get_layer(m, layer).register_forward_hook(lambda _m, _i, o: out.append(o))
    try:
        return sum(_floor_chunk(m, out, first, b, in_hw, fmt, autocast_dtype, device, timed)
                   * steps for first, b in chunks(n, batch_size))
    finally:
        handle.remove()


def _floor_chunk(m: nn.Module, out: list[Tensor], first: int, b: int,
                 in_hw: tuple[int, int], fmt: torch.memory_format,
                 autocast_dtype: torch.dtype | None, device: torch.device, timed: int
                 ) -> float:
    """Seconds per forward+backward pass of one chunk of the floor."""
    x = torch.rand(b, 3, *in_hw, device=device).contiguous(memory_format=fmt)
    x.requires_grad_(True)
    rows = torch.arange(b, device=device)
    chans = torch.arange(first, first + b, device=device)

    def one() -> Tensor:
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16,
                            enabled=autocast_dtype is not None):
            m(x)
        vals = out.pop()[rows, chans].flatten(1).mean(1).float()  # as units_objective
        (g,) = torch.autograd.grad(-vals.sum(), x)
        return g

    return per_pass(one, timed, device)


def part_seconds(n: int, batch_size: int | None, size: int, steps: int, timed: int,
                 fixed: tuple[int, int] | None, norm: nn.Module, device: torch.device,
                 channels_last: bool = False) -> dict[str, float]:
    """Per sweep: parameterization alone, parameterization + transforms (+ normalization
    and the channels_last copy), and the Adam step, each timed alone on the same batches
    (forward + backward from a fixed random gradient) and scaled to ``steps``."""
    secs = {"param": 0.0, "param+transforms": 0.0, "adam": 0.0}
    for _first, b in chunks(n, batch_size):
        for k, v in _parts_chunk(b, size, timed, fixed, norm, device, channels_last).items():
            secs[k] += v * steps
    return secs


def _parts_chunk(b: int, size: int, timed: int, fixed: tuple[int, int] | None,
                 norm: nn.Module, device: torch.device, channels_last: bool
                 ) -> dict[str, float]:
    """Seconds per step of one chunk's parameterization, transforms and Adam step."""
    gens = [make_generator(0) for _ in range(b)]
    param = ImageParam(b, 3, size, size, generators=gens, device=device)
    chain = TransformChain(standard_transforms())
    draws = chain.draw(gens, timed + 3).to(device)
    opt = default_optimizer([param.raw])
    calls = [0]

    def pipeline() -> Tensor:  # what render's forward() does before the model
        calls[0] += 1
        x = norm(fit_to_input(chain(param(), draws[calls[0] % len(draws)]), fixed))
        return x.contiguous(memory_format=torch.channels_last) if channels_last else x

    g_img = torch.randn(b, 3, size, size, device=device)
    g_x = torch.randn_like(pipeline().detach())

    def param_only() -> None:
        param.raw.grad = None
        param().backward(g_img)

    def with_transforms() -> None:
        param.raw.grad = None
        pipeline().backward(g_x)

    secs = {"param": per_pass(param_only, timed, device),
            "param+transforms": per_pass(with_transforms, timed, device)}
    param.raw.grad = torch.randn_like(param.raw)
    secs["adam"] = per_pass(opt.step, timed, device)
    return secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--small", action="store_true", help="reduced CPU sizes (see docstring)")
    ap.add_argument("--units", type=int, nargs="+", default=[64],
                    help="sweep sizes (channels 0…N−1 of --layer), each its own sweep")
    ap.add_argument("--batch-size", type=int, default=None,
                    help="units rendered together (default: all of a sweep at once)")
    ap.add_argument("--lucent-units", type=int, default=2)
    ap.add_argument("--steps", type=int, default=512)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--layer", default="layer4")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                    help="default: both on CUDA, fp32 on the CPU")
    ap.add_argument("--preset", default=None, choices=sorted(PRESETS),
                    help=f"render preset (default: render's, {DEFAULT_PRESET!r})")
    ap.add_argument("--floor-steps", type=int, default=64,
                    help="passes timed for the floor and the shares, scaled to --steps "
                         "(0: all --steps)")
    ap.add_argument("--no-floor", action="store_true", help="skip the floor and the shares")
    ap.add_argument("--no-lucent", action="store_true", help="skip the torch-lucent peer")
    ap.add_argument("--json", default=None, help="write the final JSON here too")
    if ap.parse_known_args()[0].small:
        ap.set_defaults(model="resnet18", units=[4, 8], lucent_units=1, steps=32, size=128,
                        floor_steps=8)
    args = ap.parse_args()
    device = torch.device(args.device)
    configs = args.configs or (list(CONFIGS) if device.type == "cuda" else ["fp32"])
    timed = min(args.floor_steps or args.steps, args.steps)
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(weights=None).to(device).eval()
    norm = Normalize(IMAGENET_MEAN, IMAGENET_STD).to(device)
    fixed = resolve_input_size(model, "auto")  # what render_units resolves
    in_hw = fixed or TransformChain(standard_transforms()).out_size((args.size, args.size))
    first_k = args.lucent_units
    rows: dict[str, dict[str, object]] = {}

    def emit(tag: str, row: dict[str, object]) -> None:
        rows[tag] = row
        print(json.dumps({tag: row}), flush=True)

    for n in args.units:
        units = [f"{args.layer}:{i}" for i in range(n)]
        for cfg in configs:
            kw = dict(CONFIGS[cfg])
            render_kw = {**kw, "preset": args.preset or DEFAULT_PRESET}
            render_units(model, units[:2], thresholds=(2,), image_size=args.size,
                         normalize=norm, **render_kw)  # warm-up of this configuration
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            synchronize(device)
            t0 = time.perf_counter()
            res = render_units(model, units, batch_size=args.batch_size,
                               thresholds=(args.steps,), image_size=args.size,
                               normalize=norm, **render_kw)
            synchronize(device)
            dt = time.perf_counter() - t0
            row: dict[str, object] = {
                "units": n, "batch": min(args.batch_size or n, n), "seconds": dt,
                "seconds_per_unit": dt / n}
            if device.type == "cuda":
                row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            vals = torch.cat([channel_values(model, args.layer, list(range(s, s + b)),
                                             res.final[s:s + b].to(device), norm)
                              for s, b in chunks(n, args.batch_size)])
            row["mean_objective"] = vals.mean().item()
            row["mean_objective_first"] = vals[:first_k].mean().item()
            del res
            if not args.no_floor:
                fl = floor_seconds(model, args.layer, n, args.batch_size, args.steps, timed,
                                   in_hw, device, **kw)  # type: ignore[arg-type]
                parts = part_seconds(n, args.batch_size, args.size, args.steps, timed, fixed,
                                     norm, device, bool(kw.get("channels_last", False)))
                tr = parts["param+transforms"] - parts["param"]
                row.update({
                    "floor_seconds": fl, "over_floor": dt / fl,
                    "floor_timed_passes": timed,
                    "param_share": parts["param"] / dt, "transforms_share": tr / dt,
                    "adam_share": parts["adam"] / dt,
                    "other_share": (dt - fl - parts["param+transforms"] - parts["adam"]) / dt,
                })
            emit(f"lightning_fv {cfg} @ {n} units", row)

    peer = None
    if not args.no_lucent:
        try:
            peer = _import_lucent()
        except ImportError as err:
            print(f"torch-lucent not importable ({err}): skipping the Lucent comparison")
    if peer is not None:
        lucent_render, lucent_param = peer
        lucent_imgs, t_lucent = [], 0.0
        for i in range(args.lucent_units):
            synchronize(device)
            t0 = time.perf_counter()
            imgs = lucent_render.render_vis(
                model, f"{args.layer}:{i}",
                param_f=lambda: lucent_param.image(args.size),
                thresholds=(args.steps,), show_image=False, progress=False)
            synchronize(device)
            t_lucent += time.perf_counter() - t0
            lucent_imgs.append(torch.from_numpy(imgs[-1]).permute(0, 3, 1, 2))
        lucent = torch.cat(lucent_imgs).to(device)
        lv = channel_values(model, args.layer, list(range(args.lucent_units)), lucent, norm)
        per_unit = t_lucent / args.lucent_units
        for row in rows.values():
            row["speedup_vs_lucent"] = per_unit * row["units"] / row["seconds"]  # type: ignore[operator]
        emit("lucent 0.1.8 (one unit at a time)", {
            "seconds_measured": t_lucent, "units_measured": args.lucent_units,
            "seconds_per_unit": per_unit, "mean_objective_first": lv.mean().item()})

    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "model": args.model, "layer": args.layer,
            "units": args.units, "batch_size": args.batch_size, "steps": args.steps,
            "size": args.size, "preset": args.preset or DEFAULT_PRESET,
            "floor_input": list(in_hw), "date": time.strftime("%Y-%m-%d")}
    print(f"\n{meta['date']} · {meta['device']} · torch {torch.__version__} · {args.model} "
          f"{args.layer}, {args.steps} steps, {args.size} px (model input "
          f"{in_hw[0]}×{in_hw[1]}), preset {meta['preset']!r}")
    print("| renderer | units | batch | sweep (s) | s / unit | floor (s) | sweep / floor "
          "| param | transforms | Adam | other | vs Lucent | objective | objective "
          f"({'unit 0' if first_k == 1 else f'units 0–{first_k - 1}'}) | peak GiB |")
    print("|" + "---|" * 15)

    def f(r: dict[str, object], key: str, fmt: str) -> str:
        return format(r[key], fmt) if key in r else "–"

    for tag, r in rows.items():
        if tag.startswith("lucent"):
            print(f"| {tag} | – | 1 | – | {f(r, 'seconds_per_unit', '.3f')} | – | – | – | – | "
                  f"– | – | 1× | – | {f(r, 'mean_objective_first', '.4g')} | – |")
            continue
        cfg = tag.removeprefix("lightning_fv ").split(" @ ")[0]
        print(f"| lightning_fv {cfg} | {r['units']} | {r['batch']} | {f(r, 'seconds', '.2f')} "
              f"| {f(r, 'seconds_per_unit', '.3f')} | {f(r, 'floor_seconds', '.2f')} "
              f"| {f(r, 'over_floor', '.3f')} | {f(r, 'param_share', '.1%')} "
              f"| {f(r, 'transforms_share', '.1%')} | {f(r, 'adam_share', '.1%')} "
              f"| {f(r, 'other_share', '.1%')} | {f(r, 'speedup_vs_lucent', '.1f')}"
              f"{'×' if 'speedup_vs_lucent' in r else ''} | {f(r, 'mean_objective', '.4g')} "
              f"| {f(r, 'mean_objective_first', '.4g')} | {f(r, 'peak_memory_gib', '.2f')} |")
    line = json.dumps({"meta": meta, "results": rows})
    print(line, flush=True)
    if args.json:
        Path(args.json).write_text(line + "\n")


if __name__ == "__main__":
    main()
